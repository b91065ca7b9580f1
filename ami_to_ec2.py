#!/usr/bin/env python3
"""Launch a working replacement EC2 instance from a backup made by ec2_to_ami.py.

    python ami_to_ec2.py --server web01 --dry-run
    python ami_to_ec2.py --server web01
    python ami_to_ec2.py --all                 # a fleet: every server with a backup here
    python ami_to_ec2.py --drill --all         # prove the backups restore, then clean up

Exit codes: 0 every server launched and reached WAIT (a drill: passed), 1 an
AWS-side failure or a failed server, 2 usage or config error (no AWS call). The
code is the ec2ami package beside this file; this script is its command line, as
is dist/ami_to_ec2.pyz (make dist).
"""

from __future__ import annotations

import sys

from ec2ami.restore import cli


def main(argv: list[str] | None = None) -> int:
    """Run the restore command line, with the config beside this script by default."""
    return cli.main(argv, script=__file__)


if __name__ == "__main__":
    sys.exit(main())
