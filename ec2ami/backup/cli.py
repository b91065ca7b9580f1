"""The backup's command line: parse the flags, load the config, take the run lock, then
list, check, cost, print a policy, manage cron, or run the backup (run.run_backup).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ec2ami import clock
from ec2ami.aws import AWS_ERRORS, Clients, RoleError, base_session, connect, error_text
from ec2ami.backup.config import RPO_DEFAULTS, load_config, load_other_config
from ec2ami.backup.cost import cost_report
from ec2ami.backup.cron import CronError, check_cron_can_run, check_cron_schedule, manage_cron
from ec2ami.backup.listing import list_backups
from ec2ami.backup.monitoring import run_check
from ec2ami.backup.run import run_backup
from ec2ami.backup.ssm_document import print_ssm_document
from ec2ami.backup.state import LastRun, record_run
from ec2ami.errors import EXIT_FAILED, EXIT_LOCKED, EXIT_USAGE, ConfigError
from ec2ami.facts import REGION_RE
from ec2ami.iam.backup import print_iam_policy
from ec2ami.output import command_line, parse_command_line, run_to_exit, setup_logging
from ec2ami.settings import lock_path

if TYPE_CHECKING:
    from ec2ami.backup.config import BackupConfig

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None, script: str | None = None) -> int:
    """Parse the command line, run it; with --json, a failure prints the error document."""
    args = parse_command_line(parse_args, argv, script)
    setup_logging(args)
    return run_to_exit(args.json, lambda: run_command(args, script))


def run_command(args: argparse.Namespace, script: str | None) -> int:
    """Load the config, take the lock, then list, check, plan or run the backup."""
    try:
        config = load_with_flags(args)
        setup_logging(args, config.log_file)
        if args.install_cron:
            check_cron_schedule(args.install_cron)
            check_cron_can_run(config.region, config.profile, config.role_arn)
        if args.cron:
            return manage_cron(args, script)
        if args.print_iam_policy or args.print_ssm_document:
            return print_for_aws(config, args)
        if args.last_run:  # STATE_FILE only: no AWS call
            now = clock.utc_now()
            return LastRun.read(config.state_file, config.rpo_hours or 1e6, now).show(
                args.json, now
            )
        if args.server and not config.select_tags:
            names = {s.name for s in config.servers}
            unknown = [n for n in args.server if n not in names]
            if unknown:
                raise ConfigError(f"--server {unknown[0]}: not in SERVERS ({', '.join(names)})")
        if args.check and config.rpo_hours is None:
            raise ConfigError(
                f"RPO_HOURS: SCHEDULE {config.schedule!r} has no default RPO "
                f"({', '.join(RPO_DEFAULTS)} have); set RPO_HOURS for --check"
            )
        others = [(path, load_other_config(path)) for path in args.also_config]
        clients = make_clients(config)
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_USAGE
    except OSError as err:
        log.error("config error: LOG_FILE: %s", err)
        return EXIT_USAGE
    except (CronError, RoleError) as err:
        log.error("%s", err)
        return EXIT_FAILED
    try:
        if args.list:  # only reads: no lock needed
            return list_backups(clients, config, args.server, args.recycle_bin, args.json)
        if args.cost:  # only reads and lists
            return cost_report(clients, config, args.server, args.json)
        if args.check:  # only reads: no lock needed
            return run_check(clients, config, args, others)
        return run_locked(clients, config, args)
    except LockError as err:
        log.error("%s; nothing done", err)
        return EXIT_FAILED
    except AWS_ERRORS as err:
        log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
        return EXIT_FAILED


def run_locked(clients: Clients, config: BackupConfig, args: argparse.Namespace) -> int:
    """The backup (or its dry run) under this config's lock; STATE_FILE records how it
    ended, an AWS error or Ctrl-C included."""
    with run_lock(args.config) as locked:
        if not locked:
            log.error("another run of %s is still going; nothing done", args.config)
            return EXIT_LOCKED
        started = clock.utc_now()  # to the microsecond: the sweep leaves what this run makes
        try:
            return run_backup(clients, config, args, started)
        except AWS_ERRORS as err:  # logged first, so STATE_FILE keeps the line
            log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
            if not args.dry_run:
                record_run(clients, config, started, EXIT_FAILED)
            return EXIT_FAILED
        except KeyboardInterrupt:
            log.error("%s", INTERRUPTED)
            if not args.dry_run:
                record_run(clients, config, started, EXIT_FAILED)
            return EXIT_FAILED


INTERRUPTED = (
    "interrupted: nothing more was done. Images already asked for stay, tagged, and count "
    "as backups once available; the next run prunes and sweeps as usual, snapshots a "
    "cut-short prune left included"
)


def load_with_flags(args: argparse.Namespace) -> BackupConfig:
    """The config file's settings, with --region and --profile over them."""
    config = load_config(args.config)
    if args.region or args.profile:
        config = dataclasses.replace(config, region=args.region or config.region,
                                     profile=args.profile or config.profile)  # fmt: skip
    return config


def make_clients(config: BackupConfig) -> Clients:
    """Build the run's clients: region, profile, ROLE_ARN and botocore's standard retries."""
    session, client_config = base_session(config.profile, config.region)
    if session.region_name in config.copy_to_regions:
        raise ConfigError(f"COPY_TO_REGIONS lists {session.region_name}, the region backed up")
    return connect(session, client_config, config.role_arn, "backup", config.schedule,
                   limits=config.ec2_api_limits)  # fmt: skip


def build_parser(script: str | None = None) -> argparse.ArgumentParser:
    """The command line's options: one declaration for parsing, --help and docs/reference.md.

    Long because it is one add_argument per option: a table, read down.
    """
    parser = command_line(
        "ec2_to_ami.py",
        "Back up EC2 instances as AMIs and prune old ones.",
        "ec2_to_ami_config.py",
        script,
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--region", help="back up in this region (REGION)")
    parser.add_argument("--profile", help="the AWS profile to use (PROFILE)")
    parser.add_argument("--list", action="store_true", help="list managed backups and exit")
    parser.add_argument(
        "--recycle-bin", action="store_true", help="with --list: the Recycle Bin's images too"
    )
    parser.add_argument("--server", action="append", metavar="NAME", help="only this server")
    parser.add_argument("--no-prune", action="store_true", help="create backups, delete nothing")
    parser.add_argument(
        "--check", action="store_true", help="are the backups within RPO_HOURS? exit 1 if not"
    )
    parser.add_argument(
        "--cost", action="store_true", help="what the kept backups store and cost a month"
    )
    parser.add_argument(
        "--last-run",
        action="store_true",
        help="how the last run went, from STATE_FILE: its error lines and where its log is "
        "(no AWS call)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--print-iam-policy",
        action="store_true",
        help="print the least-privilege IAM policy this config needs (no AWS call)",
    )
    parser.add_argument(
        "--print-ssm-document",
        action="store_true",
        help="print the SSM Command document SSM_DOCUMENT must hold: this config's scripts, "
        "and nothing else (no AWS call)",
    )
    parser.add_argument(
        "--guard",
        action="store_true",
        help="with --print-iam-policy: the deny policy (an SCP or permission boundary) that "
        "keeps everyone but TAG_WRITERS from writing this tool's tags",
    )
    parser.add_argument(
        "--also-config",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="--check: instances these configs back up are covered too",
    )
    cron = parser.add_mutually_exclusive_group()
    cron.add_argument(
        "--install-cron", metavar="SCHEDULE", help="add or replace this config's crontab entry"
    )
    cron.add_argument(
        "--uninstall-cron", action="store_true", help="remove this config's crontab entry"
    )
    cron.add_argument("--show-cron", action="store_true", help="print this config's crontab entry")
    parser.add_argument("--cron-log", metavar="PATH", help="log file for --install-cron")
    return parser


def print_for_aws(config: BackupConfig, args: argparse.Namespace) -> int:
    """--print-iam-policy (with --guard: the tag guard) or --print-ssm-document."""
    if args.print_iam_policy:
        return print_iam_policy(config, guard=args.guard)
    if not config.ssm_document:
        raise ConfigError("--print-ssm-document: set SSM_DOCUMENT to the document's name")
    return print_ssm_document(config)


def parse_args(argv: list[str] | None, script: str | None = None) -> argparse.Namespace:
    """Parse the command line; argparse exits 2 on bad usage."""
    parser = build_parser(script)
    args = parser.parse_args(argv)
    args.cron = bool(args.install_cron or args.uninstall_cron or args.show_cron)
    if args.list and (args.dry_run or args.no_prune):
        parser.error("--list does not go with --dry-run or --no-prune")
    if args.recycle_bin and not args.list:
        parser.error("--recycle-bin goes with --list")
    for printed in ("print_iam_policy", "print_ssm_document"):
        if getattr(args, printed) and (
            args.list or args.check or args.cost or args.dry_run or args.no_prune
        ):
            parser.error(f"--{printed.replace('_', '-')} goes only with --config")
    if args.region is not None and not REGION_RE.match(args.region):
        parser.error(f"--region must be a region such as eu-west-1, not {args.region!r}")
    if args.guard and not args.print_iam_policy:
        parser.error("--guard goes with --print-iam-policy")
    if args.check and (args.list or args.dry_run or args.no_prune):
        parser.error("--check does not go with --list, --dry-run or --no-prune")
    if args.cost and (args.list or args.check or args.dry_run or args.no_prune):
        parser.error("--cost does not go with --list, --check, --dry-run or --no-prune")
    if args.last_run and (
        args.list
        or args.check
        or args.cost
        or args.dry_run
        or args.no_prune
        or args.server
        or args.cron
    ):
        parser.error("--last-run goes only with --config and --json")  # fmt: skip
    if args.also_config and not args.check:
        parser.error("--also-config goes with --check")
    if args.cron and (
        args.list or args.check or args.cost or args.dry_run or args.no_prune or args.server
    ):
        parser.error("the cron options go only with --config and --cron-log")
    if args.cron_log and not args.install_cron:
        parser.error("--cron-log goes with --install-cron")
    return args


class LockError(Exception):
    """The run lock could not be opened; nothing was done."""


@contextmanager
def run_lock(config_path: str) -> Iterator[bool]:
    """Hold an exclusive lock per config file, whoever runs it; yield False if another run does.

    The lock file is named for the config's real path, so one config reached through a
    link is one lock, in a directory that does not depend on the environment (TMPDIR,
    PrivateTmp). It is opened read-only (flock needs no more) and created world-writable,
    so a run as another user than the first can take it too.
    """
    fd = open_lock_file(lock_path(config_path))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def open_lock_file(path: str) -> int:
    """Open (or create, mode 0666) the lock file read-only; LockError names it if impossible."""
    for _ in range(3):  # another user may create it between our two tries
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise LockError(f"cannot open the run lock {path}: {err.strerror}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise LockError(f"cannot create the run lock {path}: {err.strerror}") from None
        os.fchmod(fd, 0o666)  # the umask took write away from others
        return fd
    raise LockError(f"cannot open the run lock {path}")
