#!/usr/bin/env python3
"""Back up EC2 instances as AMIs, tag them at creation, and prune old ones by retention.

Run it from cron:  python ec2_to_ami.py --config /etc/ec2-backup/daily.py -q
Watch it with:     python ec2_to_ami.py --config /etc/ec2-backup/daily.py --check -q

Exit codes: 0 all servers done, 1 at least one server failed (the others were
still done), 2 usage or config error (nothing done), 3 another run of the same
config holds its lock (nothing done). The code is the ec2ami package beside this
file; this script is its command line, as is dist/ec2_to_ami.pyz (make dist).
"""

from __future__ import annotations

import sys

from ec2ami.backup import cli


def main(argv: list[str] | None = None) -> int:
    """Run the backup command line, with the config beside this script by default."""
    return cli.main(argv, script=__file__)


if __name__ == "__main__":
    sys.exit(main())
