"""The restore's command line: parse the flags, load the config, then list, print a
policy, drill, or restore (run.restore).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import sys

from ec2ami.aws import AWS_ERRORS, Clients, RoleError, base_session, connect, error_text
from ec2ami.errors import EXIT_FAILED, EXIT_USAGE, ConfigError
from ec2ami.iam.restore import print_iam_policy
from ec2ami.output import command_line, parse_command_line, run_to_exit, setup_logging
from ec2ami.restore.config import (
    RestoreConfig,
    RestoreError,
    apply_flags,
    load_config,
    validate_config,
)
from ec2ami.restore.drill import drill
from ec2ami.restore.inplace import restore_in_place, roll_back
from ec2ami.restore.listing import list_backups
from ec2ami.restore.run import restore
from ec2ami.settings import command_of

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None, script: str | None = None) -> int:
    """Parse the command line, run it; with --json, a failure prints the error document."""
    args = parse_command_line(parse_args, argv, script)
    setup_logging(args, stamped=False)
    return run_to_exit(args.json, lambda: run_command(args, script))


def run_command(args: argparse.Namespace, script: str | None) -> int:
    """Load and check the config, then list, dry-run, restore or drill."""
    try:
        settings = apply_flags(load_config(args.config), args)
        listing = bool(args.list or args.print_iam_policy or args.rollback)
        config = validate_config(settings, listing=listing)
        if args.print_iam_policy:
            return print_iam_policy(config)
        changes_a_live_server = config.in_place or args.rollback
        if changes_a_live_server and not (args.yes or args.dry_run or sys.stdin.isatty()):
            raise ConfigError(
                f"{'--rollback' if args.rollback else '--in-place'} changes a "
                "live server: add --yes, or run it in a terminal to confirm"
            )
        clients = make_clients(config)
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_USAGE
    except RoleError as err:
        log.error("%s", err)
        return EXIT_FAILED
    try:
        if args.list:
            return list_backups(clients.ec2, config, args.recycle_bin, args.json)
        if args.rollback:
            return roll_back(clients, config, args)
        if config.in_place:
            return restore_in_place(clients, config, args)
        if config.drill:
            return drill(clients, config, args)
        return restore(clients, config, args)
    except RestoreError as err:
        unchanged = "nothing changed" if config.in_place or args.rollback else "nothing launched"
        log.error("%s; %s", err, unchanged)
        return EXIT_FAILED
    except AWS_ERRORS as err:
        log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
        return EXIT_FAILED
    except KeyboardInterrupt:  # a restore that launched says more itself (run.interrupted)
        if config.in_place or args.rollback:
            log.error("interrupted part way: run the same command again to finish (it finds "
                      "its run's work by its tags), or undo it with --rollback RUN")  # fmt: skip
        else:
            log.error("interrupted before any launch: nothing launched")
        return EXIT_FAILED


def make_clients(config: RestoreConfig) -> Clients:
    """Build the clients: region, profile, ROLE_ARN and botocore's standard retries."""
    session, client_config = base_session(config.profile, config.region)
    return connect(session, client_config, config.role_arn, "restore", getpass.getuser(),
                   limits=config.ec2_api_limits)  # fmt: skip


def build_parser(script: str | None = None) -> argparse.ArgumentParser:
    """The command line's options: one declaration for parsing, --help and docs/reference.md."""
    parser = command_line(
        "ami_to_ec2.py",
        "Launch a working replacement instance from a backup.",
        "ami_to_ec2_config.py",
        script,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--server", metavar="NAME", action="append",
                       help="restore this server's newest backup (repeat for several)")  # fmt: skip
    which.add_argument("--all", action="store_true",
                       help="restore every server with an available backup here")  # fmt: skip
    which.add_argument("--ami", metavar="ID", help="restore this exact image")
    parser.add_argument(
        "--drill", action="store_true",
        help="test the restore in DRILL_SUBNET_ID, check it, then terminate it",
    )  # fmt: skip
    parser.add_argument("--before", metavar="TIME", help="newest backup at or before this time")
    parser.add_argument("--pool", metavar="POOL", help="only backups of this backup pool")
    parser.add_argument("--count", type=int, metavar="N", help="instances to launch")
    parser.add_argument("--region", help="restore in this region (a copy there, for DR)")
    parser.add_argument("--profile", help="the AWS profile to use (PROFILE)")
    parser.add_argument("--subnet-id", metavar="ID", help="launch into this subnet")
    parser.add_argument(
        "--security-group-ids", metavar="IDS", help="comma-separated security group ids"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, launch nothing")
    parser.add_argument("--list", action="store_true", help="list restorable backups")
    parser.add_argument(
        "--recycle-bin", action="store_true", help="with --list: the Recycle Bin's images too"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--print-iam-policy",
        action="store_true",
        help="print the least-privilege IAM policy this config needs (no AWS call)",
    )
    parser.add_argument("--client-token", metavar="T", help="idempotency token for a safe rerun")
    parser.add_argument(
        "--in-place", action="store_true",
        help="put the server's disks back from the backup on its live instance (IN_PLACE)",
    )  # fmt: skip
    parser.add_argument("--instance-id", metavar="ID",
                        help="with --in-place: the live instance (INSTANCE_ID)")  # fmt: skip
    parser.add_argument("--yes", action="store_true",
                        help="with --in-place or --rollback: go on without asking")  # fmt: skip
    parser.add_argument(
        "--discard-replaced", action="store_true",
        help="with --in-place: delete the replaced volumes instead of keeping them",
    )  # fmt: skip
    parser.add_argument("--rollback", metavar="RUN",
                        help="put back the volumes an in-place restore RUN replaced")  # fmt: skip
    parser.add_argument(
        "--replace", action="store_true",
        help="launch a new instance although an earlier restore's still runs (stop that one "
        "yourself)",
    )  # fmt: skip
    return parser


def parse_args(argv: list[str] | None, script: str | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits 2 on bad usage."""
    parser = build_parser(script)
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    args.command = [*command_of(script), *given]  # for a resume command: this very tool
    if args.recycle_bin and not args.list:
        parser.error("--recycle-bin goes with --list")
    if args.client_token is not None and not re.fullmatch(r"[\x21-\x7e]{1,64}", args.client_token):
        parser.error("--client-token must be 1-64 printable ASCII characters")
    if args.discard_replaced and not args.in_place:
        parser.error("--discard-replaced goes with --in-place")
    if args.rollback and (args.in_place or args.drill or args.list):
        parser.error("--rollback goes alone (with --yes, --dry-run or --json)")
    return args
