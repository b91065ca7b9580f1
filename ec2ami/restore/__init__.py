"""The restore (ami_to_ec2.py): launch a twin of a server from its backup, or a fleet, or a drill.

Read cli.main, then run.restore: config → find the backup → plan → check → launch → report.
"""
