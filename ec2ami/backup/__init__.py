"""The backup (ec2_to_ami.py): make each server's AMI, follow it, copy it, and keep KEEP.

Read cli.main, then run.run_backup: config → look → plan → act → report.
"""
