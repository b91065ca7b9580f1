"""ec2ami: back up EC2 instances as AMIs, and restore them as twins or in place.

The two commands are thin faces over this package: ``ec2_to_ami.py`` runs
``ec2ami.backup.cli.main`` and ``ami_to_ec2.py`` runs ``ec2ami.restore.cli.main``.
What both sides share lives once, at this level:

  contract   the tags every backup carries, and the launch record
  facts      EC2, EBS and SSM facts: states, error codes, limits, name rules
  aws        the one session and clients class, retries, pacing, error text
  settings   reading a config module; errors: exit codes and ConfigError
  polling    how often a run asks EC2 while it waits; clock: the run's clock
  output     tables, logging, and the command line's shared conventions
  iam        the least-privilege policy each config needs
"""

__version__ = "0.2.0"
