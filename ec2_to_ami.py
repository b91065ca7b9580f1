#!/usr/bin/env python3
"""Back up EC2 instances as AMIs, tag them at creation, and prune old ones by retention.

Run it from cron:  python ec2_to_ami.py --config /etc/ec2-backup/daily.py -q

Watch it with:     python ec2_to_ami.py --config /etc/ec2-backup/daily.py --check -q

Exit codes: 0 all servers done, 1 at least one server failed (the others were
still done), 2 usage or config error (nothing done), 3 another run of the same
config holds its lock (nothing done). --check: 0 all fresh, 1 a problem, 2 config.
--cost: 0 every volume measured, 1 one could not be (its row says "?").

Read it in this order; each section is marked "# --- <name>":
  The tag contract, EC2 facts   the names of things: tags, states, error codes, limits
  The story                     main(), then run_backup(): config, look, plan, act, report
  Config                        load and check the config file, before any AWS call
  The plan (pure)               retention, and what the run will create and remove
  Tags                          the tags written at creation, and the launch record
  AWS access                    one session and its clients, retries, pacing
  Look at what exists           servers, their instances (and what each runs with, for
                                the launch record) and existing backups
  Do it                         create the images, follow them, deregister
  Pools                         whose images a run may count and prune
  The sweep                     this pool's orphaned snapshots
  Disaster recovery             copies in other regions, sharing, deprecation
  Consistency through SSM       VSS on Windows, pre and post scripts
  Carrying out the plan         the creator, follower and housekeeping threads; report
  Dry run and listing           print the plan; list the backups
  Cost                          --cost: the blocks the kept snapshots store, and their price
  Monitoring                    --check, the state file, CloudWatch metrics
  IAM policy                    --print-iam-policy: the least privilege this config needs
  Scheduling, Command line
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import ipaddress
import json
import logging
import math
import os
import queue
import re
import secrets
import shlex
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

log = logging.getLogger("ec2_to_ami")

TOOL = "ec2-to-ami"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3

# --- The tag contract -------------------------------------------------------
# Every managed image and its snapshots carry these tags, set at creation.
# ami_to_ec2.py reads them; tests/test_contract.py keeps the two scripts agreed.
# A value longer than TAG_VALUE_MAX continues in "<key>:2", "<key>:3", ...
TAG_PREFIX = "ec2-to-ami:"
TAG_MANAGED = "ec2-to-ami:managed-by"  # marker: value is TOOL
TAG_SERVER = "ec2-to-ami:server"  # exactly the server name
TAG_SCHEDULE = "ec2-to-ami:schedule"
TAG_INSTANCE_ID = "ec2-to-ami:instance-id"
TAG_CREATED = "ec2-to-ami:created"  # run start, ISO 8601 UTC
# The retention pool: POOL, which defaults to the config file's name, so two configs
# that back up a server of the same name never count (or prune) each other's images.
TAG_POOL = "ec2-to-ami:pool"
TAG_RUN = "ec2-to-ami:run"  # this run's own id: only its images are adopted or polled
# The source instance's launch configuration, for the restore.
TAG_INSTANCE_TYPE = "ec2-to-ami:instance-type"
TAG_SUBNET = "ec2-to-ami:subnet-id"
TAG_SECURITY_GROUPS = "ec2-to-ami:security-group-ids"  # comma-separated
TAG_KEY_NAME = "ec2-to-ami:key-name"
TAG_INSTANCE_PROFILE = "ec2-to-ami:iam-instance-profile"  # ARN
TAG_PRIVATE_IP = "ec2-to-ami:private-ip"
TAG_ELASTIC_IP = "ec2-to-ami:eip-allocation-id"
TAG_PLATFORM = "ec2-to-ami:platform"  # windows | linux
TAG_HTTP_TOKENS = "ec2-to-ami:http-tokens"  # required | optional
TAG_INSTANCE_TAG_KEYS = "ec2-to-ami:instance-tag-keys"  # JSON list of copied keys
# The SELECT_TAGS keys of the config that made the image (JSON list): a restore drill leaves
# them off its instance, so no backup (or DLM policy) selects a drill instance by them.
TAG_SELECT_TAG_KEYS = "ec2-to-ami:select-tag-keys"
# On a drill instance (ami_to_ec2.py --drill): the server it tests. No backup selects it.
TAG_DRILL = "ec2-to-ami:drill"
TAG_DRILL_RUN = "ec2-to-ami:drill-run"  # and the drill run that launched it
# On an image a drill restored: "<UTC time> ok|failed status-ok=<s>s check=<s>s".
TAG_VERIFIED = "ec2-to-ami:verified"
# Set on a copy in another region (with all of the source's tags, by CopyImageTags).
TAG_SOURCE_REGION = "ec2-to-ami:source-region"
TAG_SOURCE_IMAGE = "ec2-to-ami:source-image-id"
# Set once the image is shared: "<image id>:<account>,<account>". The image id keeps a
# copy, which inherits its source's tags, from passing for shared itself.
TAG_SHARED_WITH = "ec2-to-ami:shared-with"
# Everything else the source instance ran with, for a restore that makes a twin: one
# compact JSON document (continued like any long value). A key left out has the value
# LAUNCH_DEFAULTS gives it, so an ordinary instance records a short document; "unknown"
# lists what could not be read.
TAG_LAUNCH = "ec2-to-ami:launch"
LAUNCH_VERSION = 1
LAUNCH_TAGS_MAX = 6
LAUNCH_DEFAULTS: dict[str, Any] = {
    "tenancy": "default",
    "placement_group": None,
    "partition": None,
    "host_id": None,
    "host_resource_group": None,
    "affinity": None,
    "cpu_options": None,  # {"CoreCount": n, "ThreadsPerCore": n}
    "credits": None,  # "standard" | "unlimited" (T instance types only)
    "ebs_optimized": False,
    "hibernation": False,
    "nitro_enclave": False,
    "capacity_reservation": "open",
    "http_tokens": "optional",
    "http_hop_limit": 1,
    "http_endpoint": "enabled",
    "http_ipv6": "disabled",
    "metadata_tags": "disabled",
    "hostname_type": "ip-name",
    "dns_a_record": False,
    "dns_aaaa_record": False,
    "termination_protection": False,
    "stop_protection": False,
    "shutdown_behavior": "stop",
    "monitoring": False,
    "auto_recovery": "default",
    "interfaces": [],  # by device index: {"index", "subnet", "groups", "ip", ...}
    "elastic_ips": [],  # {"index": device index, "ip": private IP, "allocation": eipalloc-}
    "target_groups": [],  # {"arn", "port"}
    "classic_load_balancers": [],
    "unknown": [],
}

MAX_TAGS = 50
TAG_VALUE_MAX = 256
TAG_KEY_MAX = 128

# --- EC2 facts ----------------------------------------------------------------
AVAILABLE, PENDING, FAILED = "available", "pending", "failed"
DISABLED = "disabled"  # DisableImage: hidden from DescribeImages unless IncludeDisabled
# DescribeImages' DeregistrationProtection: "disabled", "enabled-with-cooldown",
# "enabled-without-cooldown", or "disabled-until <time>" while a cooldown runs.
PROTECTION_OFF = "disabled"
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
ERR_DUPLICATE_NAME = "InvalidAMIName.Duplicate"
ERR_SNAPSHOT_IN_USE = "InvalidSnapshot.InUse"
ERR_SNAPSHOT_NOT_FOUND = "InvalidSnapshot.NotFound"
ERRS_IMAGE_GONE = {"InvalidAMIID.Unavailable", "InvalidAMIID.NotFound"}  # already deregistered
SNAPSHOT_SKIPPED = "skipped"  # DeregisterImage kept a snapshot another image uses
SNAPSHOT_DELETED = "success"
SNAPSHOT_NO_PERMISSION = "missing-permissions"  # the caller lacks DeleteSnapshot on it
FILTER_VALUES_MAX = 200
# GetLaunchTemplateData calls in flight at once: enough to reach EC2's describe rate (20/s)
# at 100 ms a call, so a large fleet waits for the bucket, not for round trips.
LAUNCH_DATA_THREADS = 8
# GetLaunchTemplateData calls these on the caller's behalf (EC2 API reference).
LAUNCH_DATA_DESCRIBES = ["ec2:DescribeInstanceCreditSpecifications", "ec2:DescribeVolumes",
                         "ec2:DescribeSpotInstanceRequests"]  # fmt: skip
# GetLaunchTemplateData's answer -> launch record key: what DescribeInstances does not say.
# One call per instance gives all of them (three DescribeInstanceAttribute calls would).
LAUNCH_DATA_KEYS = {
    "DisableApiTermination": "termination_protection",
    "DisableApiStop": "stop_protection",
    "InstanceInitiatedShutdownBehavior": "shutdown_behavior",
}
INTERFACE_DEFAULTS = {"secondary": [], "ipv6": 0, "source_dest_check": True, "description": "",
                      "delete_on_termination": True, "public_ip": False}  # fmt: skip
BURSTABLE_RE = re.compile(r"^t\d")  # T instance types: CPU credits
DESCRIPTION_MAX = 255  # CreateImage and CopyImage
AMI_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
AMI_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]")
AMI_NAME_CHARS = "letters, digits and ()[] ./-'@_"
INSTANCE_ID_RE = re.compile(r"^i-([0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SCHEDULE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
POOL_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
ACCOUNT_RE = re.compile(r"^\d{12}$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
SESSION_NAME_BAD_CHARS = re.compile(r"[^\w+=,.@-]")
KEY_MANAGER_AWS = "AWS"  # KMS KeyManager of an AWS-managed key such as aws/ebs
COPY_OPTIONS = {"keep", "kms_key_id"}
SHARE_ACCOUNTS_MAX = 15  # so TAG_SHARED_WITH fits in one tag value
DEPRECATE_LEAD = timedelta(minutes=10)  # DeprecateAt must lie in the future
# EBS snapshots, as --cost measures them with the EBS direct APIs.
BLOCK_BYTES, GIB = 512 * 1024, 1024**3  # the direct APIs' block; sizes are in GiB
DIRECT_RESULTS_MAX = 10000  # MaxResults of ListSnapshotBlocks and ListChangedBlocks
ARCHIVE_TIER = "archive"  # DescribeSnapshots' StorageTier of an archived snapshot
COSTED_STATES = (AVAILABLE, DISABLED)  # images whose snapshots are whole and billed
ERR_DIRECT_VALIDATION = "ValidationException"  # e.g. two snapshots of different volumes
DIRECT_ACCESS_DENIED = {"AccessDeniedException", "AccessDenied"}
DIRECT_ACTIONS = ["ebs:ListSnapshotBlocks", "ebs:ListChangedBlocks"]  # --cost's only lists
COST_THREADS = 8  # lineages measured at once: enough for the pace below at 200 ms a call

CRON_MARKER = "# ec2-to-ami-cron config="  # ends each managed crontab entry
CRON_SPECIAL = {"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                "@hourly"}  # fmt: skip
CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-]+$")

# EC2's request token buckets for the calls a run makes per server: (size, refill per second).
# The client waits for a token before each call instead of being refused (see Pacer).
PACED_CALLS = {
    "CreateImage": ("mutating", 50, 5.0),
    "ModifyImageAttribute": ("mutating", 50, 5.0),
    "ModifySnapshotAttribute": ("mutating", 50, 5.0),
    "EnableImageDeprecation": ("mutating", 50, 5.0),
    "DeregisterImage": ("delete", 100, 5.0),
    "DeleteSnapshot": ("delete", 100, 5.0),
    "CreateTags": ("tags", 100, 10.0),
    "CopyImage": ("copy", 100, 1.0),
    "GetLaunchTemplateData": ("describe", 100, 20.0),  # one per server, at the start
}

# The EBS direct APIs have their own per-account quotas (Amazon EBS quotas, in Service
# Quotas). --cost stays at this many calls a second of each, and botocore's standard
# retries take any throttling.
DIRECT_PACED_CALLS = {
    "ListSnapshotBlocks": ("list-blocks", 20, 20.0),
    "ListChangedBlocks": ("changed-blocks", 20, 20.0),
}

# Tokens the pacer leaves in EC2's bucket, so jitter in when calls arrive is not refused.
PACER_SLACK = 2

POLL_FIRST_SECONDS, POLL_MAX_SECONDS, POLL_FACTOR = 1.0, 15.0, 1.5
# In a long (paced) run the first poll comes this soon, so pruning starts while EC2's
# delete bucket still refills; later polls come every POLL_MAX_SECONDS, so they stay few.
POLL_WHILE_CREATING_FIRST_SECONDS = 10.0
# A new image never seen, and missing from this many polls in a row over at least this
# long, is gone, not late: EC2 is eventually consistent, and a copy's tags come with it
# (CopyImageTags), so the first polls may miss it. An image seen once and then missing
# is gone at once.
MISSED_POLLS_MAX, MISSED_GRACE_SECONDS = 3, 60.0
DEFAULT_MAX_ATTEMPTS = 10

# --- The story: main, then the run -------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Load the config, take the lock, then list, check, plan or run the backup."""
    args = parse_args(argv)
    setup_logging(args)
    try:
        config = load_config(args.config)
        setup_logging(args, config.log_file)
        if args.install_cron:
            check_cron_schedule(args.install_cron)
        if args.cron:
            return manage_cron(args)
        if args.print_iam_policy:
            return print_iam_policy(config)
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
            return list_backups(clients, config, args.server, args.recycle_bin)
        if args.cost:  # only reads and lists
            return cost_report(clients, config, args.server, args.json)
        if args.check:  # only reads: no lock needed
            return run_check(clients, config, args, others)
        with run_lock(args.config) as locked:
            if not locked:
                log.error("another run of %s is still going; nothing done", args.config)
                return EXIT_LOCKED
            started = utc_now()  # to the microsecond: the sweep leaves what this run makes
            try:
                return run_backup(clients, config, args, started)
            except (ClientError, BotoCoreError):
                if not args.dry_run:
                    record_run(clients, config, started, EXIT_FAILED)
                raise
    except LockError as err:
        log.error("%s; nothing done", err)
        return EXIT_FAILED
    except (ClientError, BotoCoreError) as err:
        log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
        return EXIT_FAILED


def run_backup(
    clients: Clients, config: BackupConfig, args: argparse.Namespace, started: datetime
) -> int:
    """Image every server; prune each as soon as its new image is verified; copy; sweep;
    report, and record the run (STATE_FILE, metrics)."""
    ec2, now = clients.ec2, started.replace(microsecond=0)
    servers, failures = discover(ec2, config, args.server, now)
    check_requested(args.server, servers, failures)
    record_launch(clients, config, servers)
    listed = managed_images(ec2, config.schedule)
    servers = split_pool_clashes(ec2, servers, failures, listed, config.pool)
    instance_of = {s.spec.name: s.spec.instance_id for s in servers}
    natives = [i for i in listed if not i.source_region and in_pool(i, config.pool, instance_of)]
    regions = destination_regions(clients, config)
    copies = {r.name: copies_in(r, config, clients.region, instance_of) for r in regions}
    plan = plan_backup(
        config, servers, failures, natives, regions, copies, now, not args.no_prune, new_run_id()
    )
    if args.dry_run:
        print_plan(plan, regions)
        if plan.prune:
            print_sweep_plan(clients, regions, config, instance_of, started)
        return EXIT_FAILED if failures else EXIT_OK
    outcomes = [Outcome(p.spec.name, p.spec.instance_id, run_id=plan.run_id) for p in plan.servers]
    created: queue.Queue[Outcome] = queue.Queue()
    creator_args = (clients, plan.servers, outcomes, config, now, created)
    threading.Thread(target=create_all, args=creator_args, daemon=True).start()
    planned = {p.spec.name: p.prunes for p in plan.servers}
    finisher = Finisher(clients, None, plan)
    source = HousekeepingThread(Housekeeping(ec2, finisher, natives, planned, plan.prune))
    replication = Replication(clients, regions, config, copies, plan)

    def settled(out: Outcome) -> None:
        replication.submit(out)  # first: it reads the outcome before housekeeping adds to it
        source.submit(out)

    follow_up(ec2, created, config, settled)
    source.finish()
    copied = replication.finish()
    if plan.prune:
        sweep_all(clients, regions, config, instance_of, started)
    code = report(outcomes + failures, copied, replication.errors)
    record_run(clients, config, started, code, outcomes + failures, copied, natives)
    return code


# --- Config -------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "REGION": None,
    "PROFILE": None,
    "SERVERS": [],
    "SELECT_TAGS": {},
    "SCHEDULE": "daily",
    "KEEP": 7,
    "MAX_AGE_DAYS": None,
    "NO_REBOOT": True,
    "TAGS": {},
    "COPY_INSTANCE_TAGS": True,
    "RECORD_LOAD_BALANCERS": True,
    "NAME_FORMAT": "{server}-{schedule}-{time:%Y%m%d-%H%M%S}",
    "WAIT": True,
    "WAIT_TIMEOUT_MINUTES": 120,
    "LOG_FILE": None,
    "CONSISTENCY": None,
    "PRE_SCRIPT": None,
    "POST_SCRIPT": None,
    "SCRIPT_TIMEOUT_SECONDS": 300,
    "ON_SCRIPT_FAILURE": "fail",
    "COPY_TO_REGIONS": {},
    "SHARE_WITH_ACCOUNTS": [],
    "DEPRECATE_AFTER_DAYS": None,
    "ROLE_ARN": None,
    "POOL": None,
    "DEREGISTRATION_PROTECTION": False,
    "RPO_HOURS": None,
    "METRICS_NAMESPACE": None,
    "STATE_FILE": None,
    # --cost: USD per GiB-month, us-east-1 as of 2026 (https://aws.amazon.com/ebs/pricing/).
    "SNAPSHOT_PRICE_GB_MONTH": 0.05,
    "ARCHIVE_PRICE_GB_MONTH": 0.0125,
}
SERVER_KEYS = {"name", "instance_id", "keep", "no_reboot", "tags", "consistency", "pre_script",
               "post_script", "platform"}  # fmt: skip
CONSISTENCY_MODES = ("crash", "reboot", "vss", "scripts")
SSM_MODES = ("vss", "scripts")
CONSISTENCY_WORDS = {"crash": "no reboot", "reboot": "with reboot", "vss": "VSS through SSM",
                     "scripts": "pre/post scripts through SSM"}  # fmt: skip
PLATFORMS = ("windows", "linux")
NAME_FIELDS = {"server", "schedule", "time", "instance_id"}
# Contract tags a single image can carry, counting continuation tags generously.
CONTRACT_TAGS_MAX = 22 + LAUNCH_TAGS_MAX
# The largest value each numeric setting takes: beyond these, a setting is a typo.
NUMBER_LIMITS = {
    "KEEP": 1000,
    "MAX_AGE_DAYS": 36500,  # 100 years
    "WAIT_TIMEOUT_MINUTES": 1440,  # a day
    "SCRIPT_TIMEOUT_SECONDS": 172800,  # SSM's longest executionTimeout, 48 hours
    "DEPRECATE_AFTER_DAYS": 3650,  # EC2 allows DeprecateAt up to 10 years ahead
    "RPO_HOURS": 8784,  # a year
    "SNAPSHOT_PRICE_GB_MONTH": 10,  # USD per GiB-month: 200 times today's price
    "ARCHIVE_PRICE_GB_MONTH": 10,
}
SCRIPT_TIMEOUT_MIN = 30  # SSM's shortest TimeoutSeconds
# RPO_HOURS when unset: a daily backup may be two hours late, a weekly one a day.
RPO_DEFAULTS = {"daily": 26.0, "weekly": 192.0}
METRICS_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9._/#: -]{1,255}$")


class ConfigError(Exception):
    """A config problem; the message names the setting."""


@dataclass(frozen=True)
class ServerSpec:
    """A server as the config names it."""

    name: str
    instance_id: str
    keep: int
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    consistency: str = "crash"  # one of CONSISTENCY_MODES
    pre_script: str | None = None
    post_script: str | None = None
    platform: str | None = None  # known from SERVERS, else from the instance


@dataclass(frozen=True)
class ServerDefaults:
    """What a server gets unless its SERVERS entry says otherwise (and all servers found
    by SELECT_TAGS): KEEP, the consistency (CONSISTENCY, else NO_REBOOT's) and the scripts."""

    keep: int
    consistency: str
    pre_script: str | None
    post_script: str | None


@dataclass(frozen=True)
class CopyTarget:
    """One COPY_TO_REGIONS entry."""

    keep: int | None  # None: each server's own keep
    kms_key_id: str | None


@dataclass(frozen=True)
class BackupConfig:
    """The checked settings, made once by validate_config; ec2_to_ami_config.py explains each."""

    servers: tuple[ServerSpec, ...]  # SERVERS
    select_tags: Mapping[str, str]
    defaults: ServerDefaults  # KEEP, CONSISTENCY, NO_REBOOT, PRE_SCRIPT, POST_SCRIPT
    schedule: str
    pool: str
    max_age_days: float | None
    name_format: str
    tags: Mapping[str, str]
    copy_instance_tags: bool
    record_load_balancers: bool
    wait: bool
    wait_timeout_minutes: float
    script_timeout_seconds: int
    on_script_failure: str  # "fail" or "crash"
    copy_to_regions: Mapping[str, CopyTarget]
    share_with_accounts: tuple[str, ...]
    deprecate_after_days: float | None
    deregistration_protection: bool
    region: str | None
    profile: str | None
    role_arn: str | None
    log_file: str | None
    rpo_hours: float | None  # RPO_HOURS, else the schedule's (RPO_DEFAULTS); None: neither
    metrics_namespace: str | None
    state_file: str | None  # None only for a config checked without a file (tests)
    snapshot_price_gb_month: float
    archive_price_gb_month: float


def load_other_config(path: str) -> BackupConfig:
    """A config named by --also-config, whose servers --check counts as covered."""
    try:
        return load_config(path)
    except ConfigError as err:
        raise ConfigError(f"--also-config {path}: {err}") from None


def load_config(path: str) -> BackupConfig:
    """Read a config file and return its validated settings."""
    settings = read_settings(path)
    if settings.get("POOL") is None:
        settings["POOL"] = default_pool(path)
    if settings.get("STATE_FILE") is None:
        settings["STATE_FILE"] = default_state_file(path)
    return validate_config(settings)


def read_settings(path: str) -> dict[str, Any]:
    """Run a config file and return its UPPER_CASE settings, not yet checked."""
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    namespace: dict[str, Any] = {"__file__": path, "__name__": "config"}
    try:
        exec(compile(source, path, "exec"), namespace)  # the config is Python by design
    except SyntaxError as err:
        raise ConfigError(f"{path}, line {err.lineno}: syntax error: {err.msg}") from None
    except BaseException as err:  # any failure in the file, even sys.exit(), is a config error
        raise ConfigError(f"{path}: {type(err).__name__}: {err}") from None
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


def default_state_file(path: str) -> str:
    """STATE_FILE when the config sets none: under $XDG_STATE_HOME (~/.local/state), named
    for the config's real path like the run lock, but kept across reboots, unlike /tmp."""
    real = os.path.realpath(path)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    stem = POOL_BAD_CHARS.sub("-", os.path.splitext(os.path.basename(real))[0])[:64]
    home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")  # fmt: skip
    return os.path.join(home, "ec2-to-ami", f"{stem}-{digest}.json")


def default_pool(path: str) -> str:
    """POOL when the config sets none: the config file's name, e.g. "prod" for prod.py."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return POOL_BAD_CHARS.sub("-", stem)[:64] or "default"


def validate_config(settings: dict[str, Any]) -> BackupConfig:
    """Check every setting's name, type and range; return them, with defaults, as a BackupConfig."""
    for name in settings:
        if name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")
    settings = {**DEFAULTS, **settings}
    settings["POOL"] = settings["POOL"] or "default"
    _check_optional_str(settings, "REGION", REGION_RE, "a region such as eu-west-1")
    _check_optional_str(settings, "PROFILE")
    _check_optional_str(settings, "LOG_FILE")
    _check_optional_str(settings, "STATE_FILE")
    _check_number(settings, "RPO_HOURS", allow_none=True)
    _check_number(settings, "SNAPSHOT_PRICE_GB_MONTH", allow_none=False)
    _check_number(settings, "ARCHIVE_PRICE_GB_MONTH", allow_none=False)
    namespace = settings["METRICS_NAMESPACE"]
    if namespace is not None and (
        not isinstance(namespace, str)
        or not METRICS_NAMESPACE_RE.match(namespace)
        or namespace.startswith(("AWS/", ":"))
    ):
        raise ConfigError(
            "METRICS_NAMESPACE must be None or 1-255 letters, digits and ._-/#: (space too), "
            f"not starting with 'AWS/' or ':', not {namespace!r}"
        )
    _check_int(settings, "KEEP", minimum=1)
    _check_number(settings, "WAIT_TIMEOUT_MINUTES", allow_none=False)
    _check_number(settings, "MAX_AGE_DAYS", allow_none=True)
    for name in ("NO_REBOOT", "COPY_INSTANCE_TAGS", "RECORD_LOAD_BALANCERS", "WAIT",
                 "DEREGISTRATION_PROTECTION"):  # fmt: skip
        _check_bool(settings[name], name)
    check_consistency_settings(settings)
    check_dr_settings(settings)
    if settings["COPY_TO_REGIONS"] and not settings["WAIT"]:
        raise ConfigError(
            "COPY_TO_REGIONS needs WAIT = True: only an available image can be copied"
        )
    for name in ("SCHEDULE", "POOL"):
        if not isinstance(settings[name], str) or not SCHEDULE_RE.match(settings[name]):
            raise ConfigError(f"{name} must be 1-64 letters, digits, '.', '_' or '-'")
    check_tags(settings["TAGS"], "TAGS")
    check_tag_room(settings["TAGS"], "TAGS")
    check_tags(settings["SELECT_TAGS"], "SELECT_TAGS", allow_reserved=True)
    defaults = ServerDefaults(
        settings["KEEP"],
        settings["CONSISTENCY"] or ("crash" if settings["NO_REBOOT"] else "reboot"),
        settings["PRE_SCRIPT"],
        settings["POST_SCRIPT"],
    )
    servers = check_servers(settings["SERVERS"], defaults, settings["TAGS"])
    check_name_format(settings["NAME_FORMAT"], settings["SCHEDULE"], servers)
    if not servers and not settings["SELECT_TAGS"]:
        raise ConfigError("SERVERS and SELECT_TAGS are both empty: nothing to back up")
    copies = {
        region: CopyTarget(options.get("keep"), options.get("kms_key_id"))
        for region, options in settings["COPY_TO_REGIONS"].items()
    }
    return BackupConfig(
        servers=tuple(servers),
        select_tags=MappingProxyType(dict(settings["SELECT_TAGS"])),
        defaults=defaults,
        schedule=settings["SCHEDULE"],
        pool=settings["POOL"],
        max_age_days=settings["MAX_AGE_DAYS"],
        name_format=settings["NAME_FORMAT"],
        tags=MappingProxyType(dict(settings["TAGS"])),
        copy_instance_tags=settings["COPY_INSTANCE_TAGS"],
        record_load_balancers=settings["RECORD_LOAD_BALANCERS"],
        wait=settings["WAIT"],
        wait_timeout_minutes=settings["WAIT_TIMEOUT_MINUTES"],
        script_timeout_seconds=settings["SCRIPT_TIMEOUT_SECONDS"],
        on_script_failure=settings["ON_SCRIPT_FAILURE"],
        copy_to_regions=MappingProxyType(copies),
        share_with_accounts=tuple(settings["SHARE_WITH_ACCOUNTS"]),
        deprecate_after_days=settings["DEPRECATE_AFTER_DAYS"],
        deregistration_protection=settings["DEREGISTRATION_PROTECTION"],
        region=settings["REGION"],
        profile=settings["PROFILE"],
        role_arn=settings["ROLE_ARN"],
        log_file=settings["LOG_FILE"],
        rpo_hours=settings["RPO_HOURS"] or RPO_DEFAULTS.get(settings["SCHEDULE"]),
        metrics_namespace=namespace,
        state_file=settings["STATE_FILE"],
        snapshot_price_gb_month=settings["SNAPSHOT_PRICE_GB_MONTH"],
        archive_price_gb_month=settings["ARCHIVE_PRICE_GB_MONTH"],
    )


def check_consistency_settings(settings: dict) -> None:
    """CONSISTENCY, the scripts, their timeout and ON_SCRIPT_FAILURE."""
    if settings["CONSISTENCY"] not in (None, *CONSISTENCY_MODES):
        raise ConfigError(f"CONSISTENCY must be None or one of {', '.join(CONSISTENCY_MODES)}")
    _check_optional_str(settings, "PRE_SCRIPT")
    _check_optional_str(settings, "POST_SCRIPT")
    _check_int(settings, "SCRIPT_TIMEOUT_SECONDS", minimum=SCRIPT_TIMEOUT_MIN)
    if settings["ON_SCRIPT_FAILURE"] not in ("fail", "crash"):
        raise ConfigError("ON_SCRIPT_FAILURE must be 'fail' or 'crash'")
    if settings["CONSISTENCY"] == "scripts" and not (
        settings["PRE_SCRIPT"] or settings["POST_SCRIPT"]
    ):
        raise ConfigError("CONSISTENCY 'scripts' needs PRE_SCRIPT or POST_SCRIPT")


def check_dr_settings(settings: dict) -> None:
    """COPY_TO_REGIONS, SHARE_WITH_ACCOUNTS, DEPRECATE_AFTER_DAYS and ROLE_ARN."""
    _check_optional_str(settings, "ROLE_ARN", ROLE_ARN_RE, "an IAM role ARN")
    _check_number(settings, "DEPRECATE_AFTER_DAYS", allow_none=True)
    accounts = settings["SHARE_WITH_ACCOUNTS"]
    if not isinstance(accounts, (list, tuple)):
        raise ConfigError(
            f"SHARE_WITH_ACCOUNTS must be a list of 12-digit account ids, not {accounts!r}"
        )
    for account in accounts:
        if not isinstance(account, str) or not ACCOUNT_RE.match(account):
            raise ConfigError(
                f"SHARE_WITH_ACCOUNTS: {account!r} is not a 12-digit account id (a string)"
            )
    if len(set(accounts)) != len(accounts) or len(accounts) > SHARE_ACCOUNTS_MAX:
        raise ConfigError(
            f"SHARE_WITH_ACCOUNTS must list at most {SHARE_ACCOUNTS_MAX} accounts, each once"
        )
    regions = settings["COPY_TO_REGIONS"]
    if not isinstance(regions, dict):
        raise ConfigError(f"COPY_TO_REGIONS must be a dict of region to options, not {regions!r}")
    for region, options in regions.items():
        where = f"COPY_TO_REGIONS[{region!r}]"
        if not isinstance(region, str) or not REGION_RE.match(region):
            raise ConfigError(f"COPY_TO_REGIONS: {region!r} is not a region such as us-west-2")
        if region == settings["REGION"]:
            raise ConfigError(f"{where}: that is REGION itself; copies go to other regions")
        if not isinstance(options, dict):
            raise ConfigError(f"{where} must be a dict such as {{'keep': 7, 'kms_key_id': None}}")
        for key in set(options) - COPY_OPTIONS:
            close = difflib.get_close_matches(key, COPY_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        if options.get("keep") is not None:
            _check_int({f"{where}['keep']": options["keep"]}, f"{where}['keep']", 1, "KEEP")
        name = f"{where}['kms_key_id']"
        _check_optional_str({name: options.get("kms_key_id")}, name, example="a KMS key id or ARN")


def _check_optional_str(settings: dict, name: str, pattern=None, example: str = "") -> None:
    """A setting that is None or a non-empty string (matching pattern, if given)."""
    value = settings[name]
    if value is None:
        return
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        want = example or "a non-empty string"
        raise ConfigError(f"{name} must be None or {want}, not {value!r}")


def _check_bool(value: Any, name: str) -> None:
    """A setting that is True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, not {value!r}")


def _check_int(settings: dict, name: str, minimum: int, limit: str | None = None) -> None:
    """A whole-number setting from minimum to its NUMBER_LIMITS maximum."""
    value, maximum = settings[name], NUMBER_LIMITS[limit or name]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(
            f"{name} must be a whole number from {minimum} to {maximum}, not {value!r}"
        )


def _check_number(settings: dict, name: str, allow_none: bool) -> None:
    """A finite number setting above 0 and at most its NUMBER_LIMITS maximum, optionally None."""
    value, maximum = settings[name], NUMBER_LIMITS[name]
    if value is None and allow_none:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 < value <= maximum:
        none = "None or " if allow_none else ""
        raise ConfigError(
            f"{name} must be {none}a number above 0 and at most {maximum}, not {value!r}"
        )


def check_tags(tags: Any, name: str, allow_reserved: bool = False) -> None:
    """A dict of tag keys to string values within EC2's limits."""
    if not isinstance(tags, dict):
        raise ConfigError(f"{name} must be a dict of tag key to value, not {tags!r}")
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= TAG_KEY_MAX:
            raise ConfigError(f"{name}: tag key {key!r} must be a string of 1-128 characters")
        if not isinstance(value, str) or len(value) > TAG_VALUE_MAX:
            raise ConfigError(f"{name}[{key!r}] must be a string of at most 256 characters")
        if not allow_reserved and key.lower().startswith(("aws:", TAG_PREFIX)):
            raise ConfigError(f"{name}: tag key {key!r} uses a reserved prefix")


def check_servers(servers: Any, defaults: ServerDefaults, tags: dict) -> list[ServerSpec]:
    """Validate SERVERS and turn each entry into a ServerSpec."""
    if not isinstance(servers, (list, tuple)):
        raise ConfigError(f"SERVERS must be a list of dicts, not {servers!r}")
    specs: list[ServerSpec] = []
    for index, entry in enumerate(servers):
        where = f"SERVERS[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a dict with name and instance_id")
        unknown = set(entry) - SERVER_KEYS
        if unknown:
            key = sorted(unknown)[0]
            close = difflib.get_close_matches(key, SERVER_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        specs.append(_server_spec(entry, where, defaults, tags))
    _check_unique(specs)
    return specs


def _server_spec(entry: dict, where: str, defaults: ServerDefaults, tags: dict) -> ServerSpec:
    """Check one SERVERS entry and build its ServerSpec."""
    name, instance_id = entry.get("name"), entry.get("instance_id")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(instance_id, str) or not INSTANCE_ID_RE.match(instance_id):
        raise ConfigError(
            f"{where} ({name}): 'instance_id' {instance_id!r} is not an instance id "
            "(i- and 8 or 17 hex digits)"
        )
    keep = entry.get("keep", defaults.keep)
    _check_int({f"{where}['keep']": keep}, f"{where}['keep']", 1, "KEEP")
    if "no_reboot" in entry:
        _check_bool(entry["no_reboot"], f"{where}['no_reboot']")
    own = entry.get("tags", {})
    check_tags(own, f"{where}['tags']")
    check_tag_room({**tags, **own}, f"TAGS plus {where}['tags']")
    spec = ServerSpec(name, instance_id, keep, MappingProxyType(dict(own)))
    return with_consistency(spec, entry, defaults, where)


def with_consistency(
    spec: ServerSpec, entry: dict, defaults: ServerDefaults, where: str
) -> ServerSpec:
    """Resolve a server's consistency: its own setting, its no_reboot, then the defaults."""
    mode = entry.get("consistency")
    if mode is None and "no_reboot" in entry:
        mode = "crash" if entry["no_reboot"] else "reboot"
    consistency = mode or defaults.consistency
    if consistency not in CONSISTENCY_MODES:
        raise ConfigError(f"{where}['consistency'] must be one of {', '.join(CONSISTENCY_MODES)}")
    pre_script = entry.get("pre_script", defaults.pre_script)
    post_script = entry.get("post_script", defaults.post_script)
    platform = entry.get("platform")
    for key, value in (("pre_script", pre_script), ("post_script", post_script)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}['{key}'] (or {key.upper()}) must be None or a command")
    if platform not in (None, *PLATFORMS):
        raise ConfigError(f"{where}['platform'] must be None, 'windows' or 'linux'")
    if consistency == "scripts" and not (pre_script or post_script):
        raise ConfigError(
            f"{where} ({spec.name}): consistency 'scripts' needs PRE_SCRIPT or POST_SCRIPT"
        )
    if consistency == "vss" and platform == "linux":
        raise ConfigError(f"{where} ({spec.name}): consistency 'vss' is for Windows; this is linux")
    return replace(
        spec, consistency=consistency, pre_script=pre_script, post_script=post_script,
        platform=platform,
    )  # fmt: skip


def check_tag_room(tags: dict, what: str) -> None:
    """Leave room for the tool's own tags within EC2's 50 tags per resource."""
    room = MAX_TAGS - CONTRACT_TAGS_MAX
    if len(tags) > room:
        raise ConfigError(f"{what}: {len(tags)} tags; at most {room} fit beside the tool's own")


def _check_unique(specs: list[ServerSpec]) -> None:
    """No two SERVERS entries share a name or an instance id."""
    for attribute in ("name", "instance_id"):
        seen: set[str] = set()
        for spec in specs:
            value = getattr(spec, attribute)
            if value in seen:
                raise ConfigError(f"SERVERS: {attribute} {value!r} appears twice")
            seen.add(value)


def check_name_format(fmt: Any, schedule: str, specs: list[ServerSpec]) -> None:
    """NAME_FORMAT names each server's backups apart, at least a minute apart, validly."""
    if not isinstance(fmt, str):
        raise ConfigError(f"NAME_FORMAT must be a string, not {fmt!r}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as err:
        raise ConfigError(f"NAME_FORMAT is not a valid format string: {err}") from None
    if "time" not in fields:
        raise ConfigError("NAME_FORMAT must contain {time}, so each backup has its own name")
    if not fields & {"server", "instance_id"}:
        raise ConfigError(
            "NAME_FORMAT must contain {server} or {instance_id}, so each server's names differ"
        )
    unknown = fields - NAME_FIELDS
    if unknown:
        raise ConfigError(f"NAME_FORMAT: unknown field {{{sorted(unknown)[0]}}}")
    sample = ServerSpec("server", "i-0123456789abcdef0", 1)
    when = datetime(2026, 1, 2, 3, 4, 5)
    try:
        first = render_name(fmt, sample, schedule, when)
        later = render_name(fmt, sample, schedule, when + timedelta(minutes=1))
    except (ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"NAME_FORMAT does not render: {err}") from None
    if first == later:
        raise ConfigError(
            f"NAME_FORMAT gives runs a minute apart the same name ({first!r}): "
            "its {time} needs at least minutes, e.g. {time:%Y%m%d-%H%M}"
        )
    check_server_names(fmt, schedule, specs or [sample], when)


def check_server_names(fmt: str, schedule: str, specs: list[ServerSpec], when: datetime) -> None:
    """Each listed server's AMI name is valid, and no two servers share one."""
    seen: dict[str, str] = {}
    for spec in specs:
        problem = name_problem(fmt, spec, schedule, when)
        if problem:
            raise ConfigError(f"NAME_FORMAT: {problem}")
        name = render_name(fmt, spec, schedule, when)
        if name in seen:
            raise ConfigError(
                f"NAME_FORMAT gives servers {seen[name]!r} and {spec.name!r} the same AMI "
                f"name {name!r} (EC2 allows only {AMI_NAME_CHARS}); rename one"
            )
        seen[name] = spec.name


def name_problem(fmt: str, spec: ServerSpec, schedule: str, when: datetime) -> str | None:
    """Why the AMI name for a server is not one EC2 takes, or None."""
    name = render_name(fmt, spec, schedule, when)
    if AMI_NAME_RE.match(name):
        return None
    return f"the AMI name for {spec.name!r} would be {name!r} ({len(name)} characters), not 3-128"


def render_name(fmt: str, server: ServerSpec, schedule: str, when: datetime) -> str:
    """Render an AMI name, replacing characters EC2 does not allow with '-'."""
    name = fmt.format(
        server=server.name, schedule=schedule, time=when, instance_id=server.instance_id
    )
    return AMI_NAME_BAD_CHARS.sub("-", name)


# --- The plan (pure): retention, and what each server gets --------------------------


@dataclass
class Image:
    """A managed image as DescribeImages reports it.

    `created` is when the backup was taken (its created tag, the run's start), not
    CreationDate: a copy's CreationDate is the time of the copy.
    """

    image_id: str
    name: str
    state: str
    created: datetime
    server: str
    schedule: str
    instance_id: str = ""
    snapshot_ids: list[str] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # device name -> snapshot id
    reason: str = ""  # StateReason, for a failed image
    tags: dict[str, str] = field(default_factory=dict)
    encrypted: bool = False
    deprecation_time: str | None = None
    pool: str = ""  # "" for an image made before pools were recorded
    protection: str = PROTECTION_OFF  # DeregistrationProtection

    @property
    def protected(self) -> bool:
        """Whether DeregisterImage is refused until protection is disabled."""
        return self.protection.startswith("enabled")

    @property
    def source_region(self) -> str | None:
        """The region this copy came from; None for an image made from an instance."""
        return self.tags.get(TAG_SOURCE_REGION)

    @property
    def shared_with(self) -> set[str]:
        """The accounts the tool shared this very image with."""
        image_id, _, accounts = self.tags.get(TAG_SHARED_WITH, "").partition(":")
        return set(accounts.split(",")) - {""} if image_id == self.image_id else set()


def plan_prune(
    images: list[Image], keep: int, max_age_days: float | None, now: datetime
) -> list[tuple[Image, str]]:
    """Return (image, reason) for each image of one server that retention removes.

    Failed images always go. Pending images never go. Of the complete ones
    (available, or disabled by someone: EnableImage brings them back) the newest
    `keep` stay; older ones go, and with max_age_days so does any but the newest
    that is older than that.
    """
    doomed = [(image, "state failed") for image in images if image.state == FAILED]
    available = sorted(
        (image for image in images if image.state in (AVAILABLE, DISABLED)),
        key=lambda image: (image.created, image.image_id),
        reverse=True,
    )
    cutoff = now - timedelta(days=max_age_days) if max_age_days is not None else None
    for rank, image in enumerate(available):
        if rank >= keep:
            doomed.append((image, f"beyond KEEP={keep}"))
        elif rank > 0 and cutoff is not None and image.created < cutoff:
            doomed.append((image, f"older than MAX_AGE_DAYS={max_age_days:g}"))
    return doomed


@dataclass
class ServerPlan:
    """What a run will do for one server, decided before it acts."""

    server: Server
    name: str  # the new image's AMI name
    tags: list[dict[str, str]]  # set at creation on the image and its snapshots
    dropped_tags: list[str]  # instance tag keys left out by EC2's 50-tag limit
    prunes: list[tuple[Image, str]]  # deregistered once the new image is verified
    copy_prunes: dict[str, list[tuple[Image, str]]]  # per region, once the new copy is
    deprecate_at: datetime | None  # DEPRECATE_AFTER_DAYS after the run starts

    @property
    def spec(self) -> ServerSpec:
        """The server as the config names it."""
        return self.server.spec


@dataclass
class BackupPlan:
    """The whole run, planned: printed by --dry-run, carried out by the run."""

    servers: list[ServerPlan]
    failures: list[Outcome]  # servers that fail before anything is made
    prune: bool  # False with --no-prune: nothing is deregistered or swept
    run_id: str  # TAG_RUN on every image the run makes
    share_with: frozenset[str]  # each new image and copy is shared with exactly these
    deprecate_after_days: float | None
    protect: bool  # DEREGISTRATION_PROTECTION on each new image and copy


def plan_backup(
    config: BackupConfig, servers: list[Server], failures: list[Outcome], natives: list[Image],
    regions: list[Region], copies: dict[str, list[Image]], now: datetime, prune: bool,
    run_id: str,
) -> BackupPlan:  # fmt: skip
    """Plan each server's new image (name, tags, deprecation), and what retention removes
    once it (and each copy) stands, here and in each COPY_TO_REGIONS region. Pure: no AWS
    call."""
    days = config.deprecate_after_days
    plans = []
    for server in servers:
        spec = server.spec
        name = render_name(config.name_format, spec, config.schedule, now)
        tags, dropped = planned_tags(server, config, now, run_id)
        prunes = prunes_after(natives, name, spec.keep, config, now, spec) if prune else []
        copy_prunes = {
            r.name: prunes_after(copies[r.name], name, r.keep or spec.keep, config, now, spec)
            if prune else []
            for r in regions
        }  # fmt: skip
        deprecate_at = now + timedelta(days=days) if days else None
        plans.append(ServerPlan(server, name, tags, dropped, prunes, copy_prunes, deprecate_at))
    accounts = frozenset(config.share_with_accounts)
    return BackupPlan(
        plans, failures, prune, run_id, accounts, days, config.deregistration_protection
    )


def planned_tags(
    server: Server, config: BackupConfig, now: datetime, run_id: str
) -> tuple[list[dict[str, str]], list[str]]:
    """A new image's tags, and the instance tags that do not fit. Room is left for what
    copies and sharing add, and for the VSS document's own tags."""
    spec = server.spec
    fixed = contract_tags(spec, config, now, run_id, server.instance, server.eip)
    fixed += launch_tags(spec, server.launch)
    copied = instance_tags(server.instance) if config.copy_instance_tags else []
    room = 2 * bool(config.copy_to_regions) + bool(config.share_with_accounts)
    room += VSS_TAG_ROOM if spec.consistency == "vss" else 0
    return backup_tags(fixed, {**config.tags, **spec.tags}, copied, limit=MAX_TAGS - room)


def prunes_after(
    images: list[Image], name: str, keep: int, config: BackupConfig, now: datetime, spec: ServerSpec
) -> list[tuple[Image, str]]:
    """What retention removes of a server's existing images once a new one is available."""
    mine = [i for i in images if i.server == spec.name]
    assumed = Image("(new)", name, AVAILABLE, now, spec.name, config.schedule)
    doomed = plan_prune([*mine, assumed], keep, config.max_age_days, now)
    return [(image, reason) for image, reason in doomed if image is not assumed]


# --- Tags -----------------------------------------------------------------------


def split_value(key: str, value: str) -> list[tuple[str, str]]:
    """Store a long value under key, key:2, key:3, ... without cutting it short."""
    chunks = [value[i : i + TAG_VALUE_MAX] for i in range(0, len(value), TAG_VALUE_MAX)]
    return [(key if n == 0 else f"{key}:{n + 1}", chunk) for n, chunk in enumerate(chunks)]


def identity_tags(
    server: ServerSpec, config: BackupConfig, created: datetime, run_id: str
) -> list[tuple[str, str]]:
    """The tags that say which backup an image is: the tool, pool, server and run."""
    return [
        (TAG_MANAGED, TOOL),
        (TAG_SERVER, server.name),
        (TAG_SCHEDULE, config.schedule),
        (TAG_POOL, config.pool),
        (TAG_INSTANCE_ID, server.instance_id),
        (TAG_CREATED, stamp(created)),
        (TAG_RUN, run_id),
    ]


def contract_tags(
    server: ServerSpec, config: BackupConfig, created: datetime, run_id: str, instance: dict,
    eip: str | None,
) -> list[tuple[str, str]]:  # fmt: skip
    """The tool's own tags for one backup: identity plus launch configuration."""
    groups = ",".join(g["GroupId"] for g in instance.get("SecurityGroups", []))
    values = [
        *identity_tags(server, config, created, run_id),
        (TAG_INSTANCE_TYPE, instance.get("InstanceType")),
        (TAG_SUBNET, instance.get("SubnetId")),
        (TAG_SECURITY_GROUPS, groups),
        (TAG_KEY_NAME, instance.get("KeyName")),
        (TAG_INSTANCE_PROFILE, instance.get("IamInstanceProfile", {}).get("Arn")),
        (TAG_PRIVATE_IP, instance.get("PrivateIpAddress")),
        (TAG_ELASTIC_IP, eip),
        (TAG_PLATFORM, "windows" if instance.get("Platform") == "windows" else "linux"),
        (TAG_HTTP_TOKENS, instance.get("MetadataOptions", {}).get("HttpTokens")),
        (TAG_SELECT_TAG_KEYS, json.dumps(sorted(config.select_tags), separators=(",", ":"))
         if config.select_tags else None),
    ]  # fmt: skip
    tags: list[tuple[str, str]] = []
    for key, value in values:
        if value:
            tags.extend(split_value(key, value))
    return tags


def launch_tags(spec: ServerSpec, record: dict | None) -> list[tuple[str, str]]:
    """The TAG_LAUNCH document as tags, within LAUNCH_TAGS_MAX: exact secondary addresses,
    then interface descriptions, give way first (with a warning) if it is too long."""
    if record is None:
        return []
    text = json.dumps(record, separators=(",", ":"))
    shrinks = [(without_secondary_addresses, "secondary private IPs recorded by count only"),
               (without_descriptions, "interface descriptions left out")]  # fmt: skip
    for shrink, what in shrinks:
        if len(text) <= LAUNCH_TAGS_MAX * TAG_VALUE_MAX:
            break
        record = shrink(record)
        text = json.dumps(record, separators=(",", ":"))
        log.warning("%s: the launch record is too long for its tags: %s", spec.name, what)
    if len(text) > LAUNCH_TAGS_MAX * TAG_VALUE_MAX:
        log.warning("%s: the launch record is too long for its tags even so, and is left "
                    "out: a restore reproduces only the basic tags", spec.name)  # fmt: skip
        return []
    return split_value(TAG_LAUNCH, text)


def without_secondary_addresses(record: dict) -> dict:
    """The record with each interface's secondary private IPs as a count."""
    nics = [
        {**{k: v for k, v in n.items() if k != "secondary"}, "secondary_count": len(n["secondary"])}
        if n.get("secondary") else n
        for n in record.get("interfaces", [])
    ]  # fmt: skip
    return {**record, "interfaces": nics}


def without_descriptions(record: dict) -> dict:
    """The record without interface descriptions."""
    nics = [
        {k: v for k, v in n.items() if k != "description"} for n in record.get("interfaces", [])
    ]
    return {**record, "interfaces": nics}


def stamp(when: datetime) -> str:
    """The TAG_CREATED form of a time: ISO 8601 UTC to the second."""
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def instance_tags(instance: dict) -> list[tuple[str, str]]:
    """The instance's own tags worth copying, Name first, then by key."""
    own = [
        (t["Key"], t["Value"])
        for t in instance.get("Tags", [])
        if not t["Key"].lower().startswith(("aws:", TAG_PREFIX))
    ]
    return sorted(own, key=lambda kv: (kv[0] != "Name", kv[0]))


def backup_tags(
    fixed: list[tuple[str, str]],
    extra: dict[str, str],
    copied: list[tuple[str, str]],
    limit: int = MAX_TAGS,
) -> tuple[list[dict[str, str]], list[str]]:
    """Combine contract, config and instance tags within EC2's 50-tag limit.

    The tool's tags come first, then the config's, then the instance's own;
    an instance tag wins over a config tag of the same key, so a restore gets
    the original's value. Returns the tags and the instance tag keys dropped.
    """
    copied_keys = {key for key, _ in copied}
    base = fixed + [(k, v) for k, v in extra.items() if k not in copied_keys]
    kept = list(copied)
    while kept:
        keys_tag = split_value(
            TAG_INSTANCE_TAG_KEYS, json.dumps([k for k, _ in kept], separators=(",", ":"))
        )
        if len(base) + len(keys_tag) + len(kept) <= limit:
            break
        kept.pop()
    else:
        keys_tag = []
    dropped = [key for key, _ in copied[len(kept) :]]
    tags = base + keys_tag + kept
    return [{"Key": k, "Value": v} for k, v in tags], dropped


# --- AWS access -------------------------------------------------------------------


class Clients:
    """The AWS clients a run uses: EC2 and SSM in REGION, and EC2 and KMS in other regions.

    All come from one session (PROFILE, then ROLE_ARN if set) with botocore's
    standard retries; every EC2 client paces its calls to its region's buckets.
    """

    def __init__(self, session: boto3.Session, client_config: Config) -> None:
        self.session, self.config = session, client_config
        self.region: str = session.region_name
        self._made: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.ec2 = self.client("ec2")

    @property
    def ssm(self) -> Any:
        """SSM in REGION, made the first time a server needs it."""
        return self.client("ssm")

    def client(self, service: str, region: str | None = None) -> Any:
        """The one client of a service in a region (REGION if None)."""
        key = (service, region or self.region)
        with self._lock:
            if key not in self._made:
                made = self.session.client(service, region_name=key[1], config=self.config)
                if service in ("ec2", "ebs"):
                    pace(made, service)
                self._made[key] = made
            return self._made[key]


def make_clients(config: BackupConfig) -> Clients:
    """Build the run's clients: region, profile, ROLE_ARN and botocore's standard retries."""
    session, client_config = base_session(config.profile, config.region)
    if session.region_name in config.copy_to_regions:
        raise ConfigError(f"COPY_TO_REGIONS lists {session.region_name}, the region backed up")
    if config.role_arn:
        name = session_name("backup", config.schedule)
        session = assume_role(session, config.role_arn, name, client_config)
    return Clients(session, client_config)


def base_session(profile: str | None, region: str | None) -> tuple[boto3.Session, Config]:
    """The session for PROFILE and REGION, and a client Config with botocore's standard retries."""
    try:
        core = botocore.session.Session(profile=profile)
        # AWS_REGION is what other SDKs and the AWS CLI read; botocore reads AWS_DEFAULT_REGION.
        region = region or os.environ.get("AWS_REGION") or None
        session = boto3.Session(botocore_session=core, region_name=region)
    except ProfileNotFound as err:
        raise ConfigError(f"PROFILE: {err}") from None
    if not session.region_name:
        raise ConfigError(
            "REGION is None, and none of AWS_REGION, AWS_DEFAULT_REGION or the profile sets one"
        )
    attempts = core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS
    retries = {"mode": "standard", "total_max_attempts": int(attempts)}
    return session, Config(retries=retries, user_agent_extra=TOOL)


def session_name(*parts: str) -> str:
    """A RoleSessionName that shows in CloudTrail who acted: the tool and what it ran."""
    return SESSION_NAME_BAD_CHARS.sub("-", "-".join((TOOL, *parts)))[:64]


def assume_role(
    session: boto3.Session, role_arn: str, name: str, client_config: Config
) -> boto3.Session:
    """A session acting as role_arn, its credentials renewed before they expire.

    The first AssumeRole happens here, so a role that cannot be assumed fails the
    run before any EC2 call; a run longer than the role's hour renews on its own.
    """
    sts = session.client("sts", config=client_config)

    def fetch() -> dict[str, str]:
        response = sts.assume_role(RoleArn=role_arn, RoleSessionName=name)
        credentials = response["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }

    try:
        metadata = fetch()
    except (ClientError, BotoCoreError) as err:
        raise RoleError(f"could not assume ROLE_ARN {role_arn}: {error_text(err)}") from None
    credentials = RefreshableCredentials.create_from_metadata(metadata, fetch, "sts-assume-role")
    core = botocore.session.Session()
    core._credentials = credentials  # botocore has no public setter for refreshable credentials
    return boto3.Session(botocore_session=core, region_name=session.region_name)


class RoleError(Exception):
    """ROLE_ARN could not be assumed; nothing was done."""


class Pacer:
    """A client-side copy of one EC2 request token bucket.

    EC2 refuses a call that finds its bucket empty, and botocore then backs
    off and spends its retry quota. Waiting for a token here instead keeps a
    large run at the bucket's pace with nothing refused.
    """

    def __init__(self, size: int, rate: float) -> None:
        self.size, self.rate = size - PACER_SLACK, rate
        self.tokens, self.stamp = float(self.size), time.monotonic()
        self.lock = threading.Lock()

    def wait(self, **_: Any) -> None:
        """Block until a token is free, then spend it."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.rate) - 1
            self.stamp = now
            delay = max(0.0, -self.tokens / self.rate)
        time.sleep(delay)


def pace(client: Any, service: str = "ec2") -> None:
    """Make an EC2 or EBS client wait for a token of the right bucket before each paced call."""
    pacers: dict[str, Pacer] = {}
    paced = PACED_CALLS if service == "ec2" else DIRECT_PACED_CALLS
    for operation, (bucket, size, rate) in paced.items():
        pacer = pacers.setdefault(bucket, Pacer(size, rate))
        client.meta.events.register(f"before-call.{service}.{operation}", pacer.wait)


def paginate(ec2: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict]:
    """Yield every item under key from every page of a describe call."""
    for page in ec2.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def error_text(err: Exception) -> str:
    """A one-line description of an AWS error, with its code."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(err).__name__}: {err}"


def chunked(values: list[str], size: int = FILTER_VALUES_MAX) -> Iterator[list[str]]:
    """Split values into filter-sized lists."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


# --- Look at what exists ------------------------------------------------------------


@dataclass
class Server:
    """A server resolved to its instance, ready to back up."""

    spec: ServerSpec
    instance: dict
    eip: str | None = None  # the Elastic IP on the primary address (TAG_ELASTIC_IP)
    launch: dict | None = None  # the launch record (TAG_LAUNCH)


@dataclass
class Outcome:
    """What happened to one server in this run."""

    name: str
    instance_id: str
    image_id: str | None = None
    run_id: str = ""  # the TAG_RUN of this run: its images, and only they, are polled
    image: Image | None = None  # this run's image as last seen
    missed_polls: int = 0  # polls in a row that did not find the new image
    missing_since: float | None = None  # when a poll first missed it (time.monotonic)
    error: str | None = None
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    post_command: str | None = None  # the post-script's SSM command, checked after the creates
    region: str | None = None  # a copy's destination region; None for the backup itself
    # A failed post-script, share or deprecation: reported (exit 1), but the image stands.
    late_errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # An outcome changes only through these methods: the creator, the follower and the
    # housekeeping threads all write to it.

    def fail(self, message: str) -> None:
        """This server (or copy) failed; a later failure is added to the first."""
        with self._lock:
            self.error = f"{self.error}; {message}" if self.error else message

    def warn(self, message: str) -> None:
        """Something the operator should know; the backup still stands."""
        with self._lock:
            self.warnings.append(message)

    def fail_late(self, message: str) -> None:
        """A failure after the image stands (post-script, share, deprecation): exit 1."""
        with self._lock:
            self.late_errors.append(message)

    def made(self, image_id: str) -> None:
        """The image that is this run's backup (or copy)."""
        with self._lock:
            self.image_id = image_id

    def pruned_image(self, image_id: str) -> None:
        """An image retention deregistered."""
        with self._lock:
            self.pruned.append(image_id)


def describe_instances(ec2: Any, filters: list[dict]) -> list[dict]:
    """All instances matching filters, flattened out of their reservations."""
    reservations = paginate(ec2, "describe_instances", "Reservations", Filters=filters)
    return [instance for r in reservations for instance in r["Instances"]]


def discover(
    ec2: Any, config: BackupConfig, only: list[str], now: datetime
) -> tuple[list[Server], list[Outcome]]:
    """Resolve SERVERS and SELECT_TAGS to instances; return servers and early failures."""
    specs = [s for s in config.servers if not only or s.name in only]
    failures: list[Outcome] = []
    found: dict[str, dict] = {}
    ids = [s.instance_id for s in specs]
    for batch in chunked(ids):
        for instance in describe_instances(ec2, [{"Name": "instance-id", "Values": batch}]):
            found[instance["InstanceId"]] = instance
    servers: list[Server] = []
    for spec in specs:
        instance = found.get(spec.instance_id)
        state = instance["State"]["Name"] if instance else None
        if state in LIVE_INSTANCE_STATES:
            servers.append(Server(spec, instance))
        else:
            reason = f"instance is {state}" if state else "instance not found"
            failures.append(Outcome(spec.name, spec.instance_id, error=reason))
    servers += select_by_tags(ec2, config, set(ids) | {s.instance_id for s in config.servers})
    servers = [s for s in servers if not only or s.spec.name in only]
    servers, failures = split_name_clashes(servers, failures)
    return split_bad_image_names(servers, failures, config, now)


def select_by_tags(ec2: Any, config: BackupConfig, listed: set[str]) -> list[Server]:
    """Every live instance carrying all SELECT_TAGS that SERVERS does not list, except a
    restore drill's."""
    if not config.select_tags:
        return []
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in config.select_tags.items()]
    filters.append({"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES})
    servers = []
    for instance in describe_instances(ec2, filters):
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if instance["InstanceId"] in listed or TAG_DRILL in tags:
            continue  # a restore drill's instance is a test copy, never a server
        name = tags.get("Name") or instance["InstanceId"]
        spec = ServerSpec(name, instance["InstanceId"], config.defaults.keep)
        spec = with_consistency(spec, {}, config.defaults, "SELECT_TAGS")
        servers.append(Server(spec, instance))
    return servers


def split_name_clashes(
    servers: list[Server], failures: list[Outcome]
) -> tuple[list[Server], list[Outcome]]:
    """Fail every server name that two different instances resolve to."""
    by_name: dict[str, list[Server]] = {}
    for server in servers:
        by_name.setdefault(server.spec.name, []).append(server)
    clean: list[Server] = []
    for name, group in by_name.items():
        if len(group) == 1:
            clean.extend(group)
            continue
        ids = ", ".join(s.spec.instance_id for s in group)
        error = (
            f"server name {name!r} resolves to several instances ({ids}); give them distinct names"
        )
        failures += [Outcome(name, s.spec.instance_id, error=error) for s in group]
    return clean, failures


def split_bad_image_names(
    servers: list[Server], failures: list[Outcome], config: BackupConfig, now: datetime
) -> tuple[list[Server], list[Outcome]]:
    """Fail servers found by tag whose AMI name is invalid or the same as another's."""
    by_name: dict[str, list[Server]] = {}
    for server in servers:
        spec = server.spec
        problem = name_problem(config.name_format, spec, config.schedule, now)
        if problem:
            failures.append(Outcome(spec.name, spec.instance_id, error=f"NAME_FORMAT: {problem}"))
            continue
        name = render_name(config.name_format, spec, config.schedule, now)
        by_name.setdefault(name, []).append(server)
    clean: list[Server] = []
    for name, group in by_name.items():
        if len(group) == 1:
            clean.extend(group)
            continue
        names = " and ".join(repr(s.spec.name) for s in group)
        error = f"servers {names} would get the same AMI name {name!r}; rename one"
        failures += [Outcome(s.spec.name, s.spec.instance_id, error=error) for s in group]
    return clean, failures


def record_launch(clients: Clients, config: BackupConfig, servers: list[Server]) -> None:
    """Record what each instance runs with that DescribeInstances does not say: its Elastic
    IPs (one call), load balancers (a call per target group), and its protections, shutdown
    behaviour and CPU credits (one GetLaunchTemplateData per server)."""
    if not servers:
        return
    ec2 = clients.ec2
    addresses = ec2.describe_addresses().get("Addresses", [])
    balancers = load_balancer_membership(clients, config, servers)
    with ThreadPoolExecutor(LAUNCH_DATA_THREADS) as pool:  # the pacer keeps EC2's rate
        data = list(pool.map(lambda server: launch_data(ec2, server), servers))
    for server, found in zip(servers, data, strict=True):
        instance_id = server.spec.instance_id
        server.launch = launch_record(
            server.instance, found, addresses,
            balancers.get(instance_id) if balancers is not None else None,
        )  # fmt: skip
        server.eip = primary_elastic_ip(server.launch)


def launch_data(ec2: Any, server: Server) -> dict[str, Any]:
    """Termination and stop protection, shutdown behaviour and (T types) CPU credits, from
    GetLaunchTemplateData; a value that could not be read is None."""
    spec = server.spec
    try:
        data = ec2.get_launch_template_data(InstanceId=spec.instance_id)["LaunchTemplateData"]
    except ClientError as err:
        log.warning("%s (%s): its protections and shutdown behaviour are not recorded: %s",
                    spec.name, spec.instance_id, error_text(err))  # fmt: skip
        data = {}
    values = {name: data.get(key) for key, name in LAUNCH_DATA_KEYS.items()}
    burstable = BURSTABLE_RE.match(server.instance.get("InstanceType", ""))
    values["credits"] = data.get("CreditSpecification", {}).get("CpuCredits") if burstable else None
    return values


def load_balancer_membership(
    clients: Clients, config: BackupConfig, servers: list[Server]
) -> dict[str, dict[str, list]] | None:
    """Each instance's ELBv2 target groups (ARN and port) and Classic Load Balancers;
    None when they cannot be read (the record then says they are unknown)."""
    if not config.record_load_balancers:
        return None
    found: dict[str, dict[str, list]] = {
        s.spec.instance_id: {"target_groups": [], "classic_load_balancers": []} for s in servers
    }
    vpcs = {s.instance.get("VpcId") for s in servers}
    try:
        elbv2 = clients.client("elbv2")
        for group in paginate(elbv2, "describe_target_groups", "TargetGroups"):
            if group.get("TargetType") != "instance" or group.get("VpcId") not in vpcs:
                continue
            arn = group["TargetGroupArn"]
            health = elbv2.describe_target_health(TargetGroupArn=arn)
            for target in health.get("TargetHealthDescriptions", []):
                spot = target.get("Target", {})
                if spot.get("Id") in found:
                    found[spot["Id"]]["target_groups"].append(
                        {"arn": arn, "port": spot.get("Port")}
                    )
        elb = clients.client("elb")
        for balancer in paginate(elb, "describe_load_balancers", "LoadBalancerDescriptions"):
            for member in balancer.get("Instances", []):
                if member.get("InstanceId") in found:
                    name = balancer["LoadBalancerName"]
                    found[member["InstanceId"]]["classic_load_balancers"].append(name)
    except (ClientError, BotoCoreError) as err:
        log.warning(
            "load balancer membership is not recorded (a restore will say so): %s; allow "
            "the Describe calls in --print-iam-policy, or set RECORD_LOAD_BALANCERS = False",
            error_text(err),
        )
        return None
    return found


def launch_record(
    instance: dict, data: dict[str, Any], addresses: list[dict], balancers: dict[str, list] | None
) -> dict[str, Any]:
    """The instance's launch configuration as the TAG_LAUNCH document: defaults left out."""
    placement, meta = instance.get("Placement", {}), instance.get("MetadataOptions", {})
    dns, cpu = instance.get("PrivateDnsNameOptions", {}), instance.get("CpuOptions", {})
    reservation = instance.get("CapacityReservationSpecification", {})
    values = {
        "tenancy": placement.get("Tenancy"),
        "placement_group": placement.get("GroupName") or None,
        "partition": placement.get("PartitionNumber"),
        "host_id": placement.get("HostId"),
        "host_resource_group": placement.get("HostResourceGroupArn"),
        "affinity": placement.get("Affinity"),
        "cpu_options": {k: cpu[k] for k in ("CoreCount", "ThreadsPerCore") if k in cpu} or None,
        "ebs_optimized": instance.get("EbsOptimized"),
        "hibernation": instance.get("HibernationOptions", {}).get("Configured"),
        "nitro_enclave": instance.get("EnclaveOptions", {}).get("Enabled"),
        "capacity_reservation": reservation.get("CapacityReservationPreference"),
        "http_tokens": meta.get("HttpTokens"),
        "http_hop_limit": meta.get("HttpPutResponseHopLimit"),
        "http_endpoint": meta.get("HttpEndpoint"),
        "http_ipv6": meta.get("HttpProtocolIpv6"),
        "metadata_tags": meta.get("InstanceMetadataTags"),
        "hostname_type": dns.get("HostnameType"),
        "dns_a_record": dns.get("EnableResourceNameDnsARecord"),
        "dns_aaaa_record": dns.get("EnableResourceNameDnsAAAARecord"),
        "monitoring": instance.get("Monitoring", {}).get("State") in ("enabled", "pending"),
        "auto_recovery": instance.get("MaintenanceOptions", {}).get("AutoRecovery"),
        **data,
        "interfaces": interfaces_of(instance, addresses),
        "elastic_ips": elastic_ips_of(instance, addresses),
        **(balancers or {}),
    }
    unknown = [k for k in LAUNCH_DATA_KEYS.values() if data.get(k) is None]
    if balancers is None:
        unknown += ["target_groups", "classic_load_balancers"]
    values["unknown"] = unknown
    record: dict[str, Any] = {"v": LAUNCH_VERSION}
    record.update({k: v for k, v in values.items() if v is not None and v != LAUNCH_DEFAULTS[k]})
    return record


def interfaces_of(instance: dict, addresses: list[dict]) -> list[dict]:
    """The instance's network interfaces by device index; defaults left out."""
    elastic = {a.get("PublicIp") for a in addresses if a.get("AllocationId")}
    made = []
    for nic in sorted(instance.get("NetworkInterfaces", []), key=device_index):
        ips = nic.get("PrivateIpAddresses", [])
        entry = {
            "index": device_index(nic),
            "subnet": nic.get("SubnetId"),
            "groups": [g["GroupId"] for g in nic.get("Groups", [])],
            "ip": nic.get("PrivateIpAddress"),
            "secondary": sorted(
                (p["PrivateIpAddress"] for p in ips if not p.get("Primary")),
                key=ipaddress.IPv4Address,
            ),
            "ipv6": len(nic.get("Ipv6Addresses", [])),
            "source_dest_check": nic.get("SourceDestCheck", True),
            "description": nic.get("Description", ""),
            "delete_on_termination": nic.get("Attachment", {}).get("DeleteOnTermination", True),
            "public_ip": nic.get("Association", {}).get("PublicIp", "") not in elastic | {""},
        }
        made.append({k: v for k, v in entry.items() if v != INTERFACE_DEFAULTS.get(k)})
    return made


def device_index(nic: dict) -> int:
    """An attached network interface's device index."""
    return int(nic.get("Attachment", {}).get("DeviceIndex", 0))


def elastic_ips_of(instance: dict, addresses: list[dict]) -> list[dict]:
    """Every Elastic IP on the instance, by (device index, private IP)."""
    index = {
        n["NetworkInterfaceId"]: device_index(n) for n in instance.get("NetworkInterfaces", [])
    }
    made = [
        {"index": index[a["NetworkInterfaceId"]], "ip": a.get("PrivateIpAddress"),
         "allocation": a["AllocationId"]}
        for a in addresses
        if a.get("AllocationId") and a.get("NetworkInterfaceId") in index
    ]  # fmt: skip
    return sorted(made, key=lambda e: (e["index"], e["ip"] or ""))


def primary_elastic_ip(record: dict) -> str | None:
    """The Elastic IP on the primary interface's primary address, for TAG_ELASTIC_IP."""
    primary = next((n.get("ip") for n in record.get("interfaces", []) if n["index"] == 0), None)
    for eip in record.get("elastic_ips", []):
        if eip["index"] == 0 and eip["ip"] == primary:
            return eip["allocation"]
    return None


def to_image(raw: dict) -> Image:
    """Turn a DescribeImages entry into an Image."""
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    devices = {
        m["DeviceName"]: m["Ebs"]["SnapshotId"]
        for m in raw.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    }
    return Image(
        image_id=raw["ImageId"],
        name=raw.get("Name", ""),
        state=raw["State"],
        created=parse_time(tags.get(TAG_CREATED) or raw.get("CreationDate", "")),
        server=tags.get(TAG_SERVER, ""),
        schedule=tags.get(TAG_SCHEDULE, ""),
        instance_id=tags.get(TAG_INSTANCE_ID, ""),
        snapshot_ids=list(devices.values()),
        devices=devices,
        reason=raw.get("StateReason", {}).get("Message", ""),
        tags=tags,
        encrypted=any(
            m.get("Ebs", {}).get("Encrypted") for m in raw.get("BlockDeviceMappings", [])
        ),
        deprecation_time=raw.get("DeprecationTime"),
        pool=tags.get(TAG_POOL, ""),
        protection=raw.get("DeregistrationProtection") or PROTECTION_OFF,
    )


def parse_time(text: str) -> datetime:
    """Parse EC2's ISO 8601 time; an unreadable one sorts as oldest."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def managed_images(ec2: Any, schedule: str | None) -> list[Image]:
    """Every image this tool made in this account and region (for one schedule)."""
    filters = [{"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]}]
    if schedule:
        filters.append({"Name": f"tag:{TAG_SCHEDULE}", "Values": [schedule]})
    raw = paginate(
        ec2, "describe_images", "Images", Owners=["self"], Filters=filters, IncludeDisabled=True
    )
    return [to_image(image) for image in raw]


# --- Do it ------------------------------------------------------------------------------


def create_backup(
    ec2: Any, planned: ServerPlan, config: BackupConfig, out: Outcome, no_reboot: bool = True
) -> None:
    """Start CreateImage for one server, named and tagged as planned: tags at creation."""
    spec, name, tags = planned.spec, planned.name, planned.tags
    try:
        response = ec2.create_image(
            InstanceId=spec.instance_id,
            Name=name,
            Description=description(
                f"{TOOL} {config.schedule} backup of {spec.name} ({spec.instance_id})"
            ),
            NoReboot=no_reboot,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": tags},
                {"ResourceType": "snapshot", "Tags": tags},
            ],
        )
        out.made(response["ImageId"])
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DUPLICATE_NAME:
            raise
        adopt_duplicate(ec2, spec, name, out)


def description(text: str) -> str:
    """An image Description within EC2's 255 characters (the server name is in the tags
    whole); botocore does not check the limit, EC2 refuses the call."""
    return text if len(text) <= DESCRIPTION_MAX else text[: DESCRIPTION_MAX - 3] + "..."


def adopt_duplicate(ec2: Any, spec: ServerSpec, name: str, out: Outcome) -> None:
    """Take an image of this name as the backup only if this very run made it.

    That happens when EC2 made the image but its answer was lost, and botocore's
    retry met the name. Any other image of the name, even an earlier run's, means
    this run made no backup.
    """
    raw = list(
        paginate(
            ec2,
            "describe_images",
            "Images",
            Owners=["self"],
            Filters=[{"Name": "name", "Values": [name]}],
            IncludeDisabled=True,  # a disabled image keeps its name too
        )
    )
    tags = {t["Key"]: t["Value"] for image in raw for t in image.get("Tags", [])}
    ours = tags.get(TAG_MANAGED) == TOOL and tags.get(TAG_RUN) == out.run_id
    if raw and ours:
        out.made(raw[0]["ImageId"])
        log.info("%s: this run's image %s exists as %s; using it", spec.name, name, out.image_id)
        return
    owner = raw[0]["ImageId"] if raw else "an image this account cannot see"
    whose = "an earlier run's backup" if tags.get(TAG_MANAGED) == TOOL else "not made by this tool"
    out.fail(
        f"AMI name {name} is taken by {owner} ({whose}), so no backup was made: "
        "NAME_FORMAT must give each run its own name"
    )


ALL_CREATED: Any = object()  # what create_all queues after the last outcome


class PollSchedule:
    """When to poll the new images.

    While images are still being created (a large run, paced by EC2's buckets):
    after POLL_WHILE_CREATING_FIRST_SECONDS, then every POLL_MAX_SECONDS, so
    pruning starts early. Once all are created: after POLL_FIRST_SECONDS,
    backing off to POLL_MAX_SECONDS.
    """

    def __init__(self) -> None:
        self.delay = POLL_MAX_SECONDS
        self.next_at = time.monotonic() + POLL_WHILE_CREATING_FIRST_SECONDS
        self.creating = True

    def created_all(self) -> None:
        """All images are created: poll soon, then back off."""
        self.creating = False
        self.delay = POLL_FIRST_SECONDS
        self.next_at = min(self.next_at, time.monotonic() + POLL_FIRST_SECONDS)

    def seconds_left(self) -> float:
        """Seconds until the next poll is due."""
        return max(0.0, self.next_at - time.monotonic())

    def polled(self) -> None:
        """A poll starts now: schedule the next one."""
        if not self.creating:
            self.delay = min(self.delay * POLL_FACTOR, POLL_MAX_SECONDS)
        self.next_at = time.monotonic() + self.delay


def follow_up(
    ec2: Any, created: queue.Queue, config: BackupConfig, settle: Any, pending_ok: bool = False
) -> None:
    """Verify each new image as it is created, with few polls, and settle each server once.

    A server is settled (handed to `settle`) when its image is available or
    failed, when its backup failed, or at the timeout; without WAIT, as soon
    as its image is created. `created` yields outcomes, then ALL_CREATED.
    With pending_ok (copies), an image still pending at the timeout is left
    to finish, with a warning, instead of failing its server.
    """
    waiting: dict[str, Outcome] = {}
    schedule, deadline = PollSchedule(), None
    while schedule.creating or waiting:
        try:
            out = created.get(timeout=schedule.seconds_left() if waiting else None)
        except queue.Empty:
            out = None
        if out is ALL_CREATED:
            schedule.created_all()
            deadline = time.monotonic() + config.wait_timeout_minutes * 60
        elif out is not None and out.image_id and not out.error and config.wait:
            waiting[out.image_id] = out
        elif out is not None:
            settle(out)
        if waiting and schedule.seconds_left() == 0:
            schedule.polled()
            poll_once(ec2, waiting, settle)
        if deadline is not None and waiting and time.monotonic() >= deadline:
            time_out(waiting, config.wait_timeout_minutes, settle, pending_ok)


def time_out(waiting: dict[str, Outcome], minutes: float, settle: Any, pending_ok: bool) -> None:
    """Fail (or with pending_ok, leave) every image still pending at the deadline."""
    for image_id in list(waiting):
        out = waiting.pop(image_id)
        message = f"image {image_id} still pending after {minutes:g} minutes"
        if pending_ok:
            out.warn(f"{message}; left to finish, the next run counts it")
        else:
            out.fail(message)
        settle(out)


def poll_once(ec2: Any, waiting: dict[str, Outcome], settle: Any) -> None:
    """One DescribeImages for all waiting images; settle those that are done."""
    try:
        images = describe_run_images(ec2, sorted({o.run_id for o in waiting.values()}))
    except (ClientError, BotoCoreError) as err:  # the next poll, or the timeout, decides
        log.warning("could not poll %d new image(s): %s", len(waiting), error_text(err))
        return
    for image_id in list(waiting):
        if settle_image(waiting[image_id], images.get(image_id)):
            settle(waiting.pop(image_id))


def describe_run_images(ec2: Any, run_ids: list[str]) -> dict[str, Image]:
    """This run's images, found by their run tag: one call however many servers."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]},
        {"Name": f"tag:{TAG_RUN}", "Values": run_ids},
    ]
    images: dict[str, Image] = {}
    for raw in paginate(ec2, "describe_images", "Images", Owners=["self"], Filters=filters):
        image = to_image(raw)
        images[image.image_id] = image
    return images


def settle_image(out: Outcome, image: Image | None) -> bool:
    """Record one polled image in its outcome; return whether it is settled."""
    if image is None:
        out.missed_polls += 1
        if out.missing_since is None:
            out.missing_since = time.monotonic()
        late = time.monotonic() - out.missing_since < MISSED_GRACE_SECONDS
        if out.image is None and (out.missed_polls < MISSED_POLLS_MAX or late):
            return False  # not visible yet: EC2 is eventually consistent
        seen = "while pending" if out.image else "before it was ever seen"
        out.fail(f"image {out.image_id} disappeared {seen} (deregistered by someone else?)")
        return True
    out.missed_polls, out.missing_since = 0, None
    out.image = image
    if image.state == PENDING:
        return False
    if image.state != AVAILABLE:
        reason = image.reason or "no reason given"
        out.fail(f"image {image.image_id} ended in state {image.state}: {reason}")
    return True


def deregister(ec2: Any, image: Image, out: Outcome) -> None:
    """Deregister one image and delete its snapshots, so none is orphaned.

    An image that is already gone counts as deregistered; its snapshots are
    still deleted here, or by the sweep at the end of the run.
    """
    if image.protected:  # DEREGISTRATION_PROTECTION (or someone) set it: retention lifts it
        ec2.disable_image_deregistration_protection(ImageId=image.image_id)
        log.info("%s: disabled the deregistration protection of %s", out.name, image.image_id)
    if image.shared_with:
        revoke_sharing(ec2, image, image.shared_with)
    try:
        response = ec2.deregister_image(ImageId=image.image_id, DeleteAssociatedSnapshots=True)
    except ClientError as err:
        if err.response["Error"]["Code"] not in ERRS_IMAGE_GONE:
            raise
        log.info("%s: %s was already deregistered", out.name, image.image_id)
        response = {}
    results = {r["SnapshotId"]: r["ReturnCode"] for r in response.get("DeleteSnapshotResults", [])}
    for snapshot_id in image.snapshot_ids:
        code = results.get(snapshot_id)
        if code == SNAPSHOT_DELETED:
            continue
        if code == SNAPSHOT_SKIPPED:
            out.warn(f"snapshot {snapshot_id} of {image.image_id} kept: in use")
            continue
        if code == SNAPSHOT_NO_PERMISSION:  # a DeleteSnapshot would be refused too
            out.warn(
                f"image {image.image_id} is deregistered, but its snapshot {snapshot_id} stays: "
                "this role may not delete it (ec2:DeleteSnapshot on snapshots carrying the "
                f"{TAG_MANAGED} tag: see --print-iam-policy)"
            )
            continue
        try:
            delete_snapshot(ec2, snapshot_id, image.image_id, out)
        except (ClientError, BotoCoreError) as err:
            out.warn(
                f"image {image.image_id} is deregistered, but its snapshot {snapshot_id} stays: "
                f"{error_text(err)}; the sweep at the end of the run (or the next run) retries"
            )


def protection_hold(image: Image) -> str | None:
    """Why retention must keep an image it would prune, or None: a deregistration
    protection with a cooldown, which someone chose outside this tool (it protects
    without), stays until they lift it and the cooldown passes."""
    if image.protection == "enabled-with-cooldown":
        return "has deregistration protection with a cooldown, set outside this tool"
    if image.protection.startswith("disabled-until"):
        return f"is in its deregistration protection's cooldown ({image.protection})"
    return None


def delete_snapshot(ec2: Any, snapshot_id: str, image_id: str, out: Outcome) -> None:
    """Delete a snapshot that DeregisterImage left behind; in use is only a warning."""
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as err:
        code = err.response["Error"]["Code"]
        if code == ERR_SNAPSHOT_NOT_FOUND:
            return
        if code != ERR_SNAPSHOT_IN_USE:
            raise
        out.warn(f"snapshot {snapshot_id} of {image_id} kept: in use")


def prune(ec2: Any, doomed: list[tuple[Image, str]], out: Outcome) -> None:
    """Deregister the planned images of one server; an error fails that server."""
    for image, reason in doomed:
        try:
            held = protection_hold(image)
            if held:
                out.warn(f"{image.image_id} is due for pruning but kept: it {held}")
                continue
            deregister(ec2, image, out)
        except (ClientError, BotoCoreError) as err:
            out.fail(f"could not deregister {image.image_id}: {error_text(err)}")
            return
        out.pruned_image(image.image_id)
        log.info("%s: deregistered %s (%s): %s", out.name, image.image_id, image.name, reason)


# --- Pools: whose images a run may count and prune --------------------------------------


def in_pool(image: Image, pool: str, instance_of: dict[str, str]) -> bool:
    """Whether an image counts in this config's retention pool.

    An image tagged with a pool belongs to that pool. One made before pools were
    recorded belongs to the pool of the config that backs up its very instance now,
    under the same server name: its first run with pools adopts it.
    """
    if image.pool:
        return image.pool == pool
    return bool(image.instance_id) and instance_of.get(image.server) == image.instance_id


def pool_clashes(ec2: Any, servers: list[Server], images: list[Image], pool: str) -> dict:
    """For each server, the other live instances whose backups its pool already holds.

    Two instances backed up into one pool under one name would prune each other's
    backups: that happens when two configs share a POOL (or a config file name).
    """
    current = {s.spec.name: s.spec.instance_id for s in servers}
    others: dict[str, set[str]] = {}
    for image in images:
        theirs, mine = image.instance_id, current.get(image.server)
        if image.pool == pool and mine and theirs and theirs != mine:
            others.setdefault(image.server, set()).add(theirs)
    ids = sorted(set().union(*others.values())) if others else []
    live: set[str] = set()
    for batch in chunked(ids):
        filters = [
            {"Name": "instance-id", "Values": batch},
            {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
        ]
        live |= {i["InstanceId"] for i in describe_instances(ec2, filters)}
    return {name: sorted(ids & live) for name, ids in others.items() if ids & live}


def split_pool_clashes(
    ec2: Any, servers: list[Server], failures: list[Outcome], images: list[Image], pool: str
) -> list[Server]:
    """Fail each server whose pool holds backups of another live instance of its name."""
    clashes = pool_clashes(ec2, servers, images, pool)
    for server in servers:
        spec, rivals = server.spec, clashes.get(server.spec.name)
        if rivals:
            error = (
                f"pool {pool!r} already holds backups of {spec.name!r} made from "
                f"{', '.join(rivals)}, a live instance other than {spec.instance_id}; two "
                "configs that share a pool would prune each other's backups: give them "
                "different POOL settings or server names (nothing backed up or pruned)"
            )
            failures.append(Outcome(spec.name, spec.instance_id, error=error))
    return [s for s in servers if s.spec.name not in clashes]


# --- The sweep: snapshots of the pool that no image uses ---------------------------------

SNAPSHOT_PENDING = "pending"


def sweep_snapshots(
    ec2: Any,
    config: BackupConfig,
    instance_of: dict[str, str],
    started: datetime,
    source_region: str | None = None,
    where: str = "",
) -> None:
    """Delete this pool's snapshots that no image uses any more, and say so in one line.

    One paginated DescribeSnapshots on the marker and schedule finds the candidates;
    snapshots of this run, pending ones and those an image still names stay. A
    snapshot some image still uses is refused by EC2 (in use) and left alone.
    """
    swept, kept = [], []
    for snapshot_id in find_orphans(ec2, config, instance_of, started, source_region):
        try:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
            swept.append(snapshot_id)
        except ClientError as err:
            if err.response["Error"]["Code"] == ERR_SNAPSHOT_IN_USE:
                continue
            kept.append(f"{snapshot_id} ({error_text(err)})")
    if swept:
        log.info(
            "sweep%s: deleted %d orphaned snapshot(s): %s", where, len(swept), ", ".join(swept)
        )
    if kept:
        log.warning(
            "sweep%s: could not delete orphaned snapshot(s) %s; the next run retries",
            where,
            ", ".join(kept),
        )


def find_orphans(
    ec2: Any,
    config: BackupConfig,
    instance_of: dict[str, str],
    started: datetime,
    source_region: str | None,
) -> list[str]:
    """This pool's snapshots, made before this run, that no image of the account uses."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]},
        {"Name": f"tag:{TAG_SCHEDULE}", "Values": [config.schedule]},
    ]
    candidates = [
        s["SnapshotId"]
        for s in paginate(
            ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=filters
        )
        if s.get("State") != SNAPSHOT_PENDING
        and s["StartTime"] < started
        and snapshot_in_pool(s, config.pool, instance_of, source_region)
    ]
    return sorted(set(candidates) - snapshots_in_use(ec2, candidates))


def snapshot_in_pool(
    snapshot: dict, pool: str, instance_of: dict[str, str], source_region: str | None
) -> bool:
    """Whether a managed snapshot belongs to this pool (and, in a DR region, to our copies)."""
    tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
    if tags.get(TAG_SOURCE_REGION) != source_region:
        return False
    as_image = Image(
        "",
        "",
        "",
        datetime.min,
        tags.get(TAG_SERVER, ""),
        "",
        instance_id=tags.get(TAG_INSTANCE_ID, ""),
        pool=tags.get(TAG_POOL, ""),
    )
    return in_pool(as_image, pool, instance_of)


def snapshots_in_use(ec2: Any, snapshot_ids: list[str]) -> set[str]:
    """Which of these snapshots an image of this account uses: one call per 200 snapshots."""
    used: set[str] = set()
    for batch in chunked(snapshot_ids):
        filters = [{"Name": "block-device-mapping.snapshot-id", "Values": batch}]
        for raw in paginate(
            ec2, "describe_images", "Images", Owners=["self"], IncludeDisabled=True, Filters=filters
        ):
            used |= set(to_image(raw).snapshot_ids)
    return used


# --- Disaster recovery: copies in other regions, sharing, deprecation -----------------------


@dataclass
class Region:
    """A destination region of COPY_TO_REGIONS."""

    name: str
    ec2: Any
    keep: int | None  # None: each server's own keep
    kms_key_id: str | None


def destination_regions(clients: Clients, config: BackupConfig) -> list[Region]:
    """COPY_TO_REGIONS with a paced EC2 client for each region."""
    return [
        Region(name, clients.client("ec2", name), target.keep, target.kms_key_id)
        for name, target in config.copy_to_regions.items()
    ]


def copies_in(
    region: Region, config: BackupConfig, source_region: str, instance_of: dict[str, str] | None
) -> list[Image]:
    """The copies this tool made in a region of this source region's backups (in this pool).

    With instance_of None (listing), every schedule's and pool's copies.
    """
    if instance_of is None:
        images = managed_images(region.ec2, None)
    else:
        images = [i for i in managed_images(region.ec2, config.schedule)
                  if in_pool(i, config.pool, instance_of)]  # fmt: skip
    return [i for i in images if i.source_region == source_region]


def copy_backup(region: Region, source_region: str, out: Outcome) -> Outcome:
    """Start CopyImage of a server's new image into a region; return the copy's outcome.

    The copy carries the source's tags (CopyImageTags) plus where it came from, and
    its snapshots get the same tags at creation. The ClientToken makes a retried
    call return the same copy.
    """
    image = out.image
    copy = Outcome(out.name, out.instance_id, run_id=out.run_id, region=region.name)
    origin = [
        {"Key": TAG_SOURCE_REGION, "Value": source_region},
        {"Key": TAG_SOURCE_IMAGE, "Value": image.image_id},
    ]
    inherited = [
        {"Key": k, "Value": v}
        for k, v in image.tags.items()
        if k != TAG_SHARED_WITH and not k.lower().startswith("aws:")
    ]
    params: dict[str, Any] = {
        "SourceImageId": image.image_id,
        "SourceRegion": source_region,
        "Name": image.name,
        "Description": description(
            f"{TOOL} copy of {image.image_id} ({out.name}) from {source_region}"
        ),
        "CopyImageTags": True,
        "ClientToken": f"{TOOL}-{image.image_id}-{region.name}",
        "TagSpecifications": [
            {"ResourceType": "image", "Tags": origin},
            {"ResourceType": "snapshot", "Tags": inherited + origin},
        ],
    }
    if region.kms_key_id:
        params.update(Encrypted=True, KmsKeyId=region.kms_key_id)
    try:
        copy.made(region.ec2.copy_image(**params)["ImageId"])
        log.info("%s: copying %s to %s as %s", out.name, image.image_id, region.name, copy.image_id)
    except (ClientError, BotoCoreError) as err:
        copy.fail(f"copy of {image.image_id} failed: {error_text(err)}")
    return copy


def copy_all(
    region: Region, source_region: str, inbox: queue.Queue, created: queue.Queue,
    copies: list[Outcome],
) -> None:  # fmt: skip
    """Copy each available new backup into a region as it arrives; queue each copy."""
    try:
        while (out := inbox.get()) is not None:
            try:
                copy = copy_backup(region, source_region, out)
            except Exception as err:  # a bug must not hide a copy: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                copy = Outcome(out.name, out.instance_id, region=region.name)
                copy.fail(f"copy failed: unexpected {type(err).__name__}: {err}")
            copies.append(copy)
            created.put(copy)
    finally:
        created.put(ALL_CREATED)


class Replication:
    """Copies each new backup to COPY_TO_REGIONS, and keeps each region's copies.

    Per region, three threads: one starts copies as backups become available, one
    polls them (one DescribeImages a poll for all of that region's copies), and one
    shares, deprecates and prunes a server's copies once its new copy has settled.
    A copy that fails leaves that region's copies of that server unpruned.
    """

    def __init__(self, clients: Clients, regions: list[Region], config: BackupConfig,
                 existing: dict[str, list[Image]], plan: BackupPlan) -> None:  # fmt: skip
        self.copies: list[Outcome] = []
        self.errors: list[str] = []
        self.lanes: list[tuple[queue.Queue, threading.Thread, HousekeepingThread]] = []
        for region in regions:
            inbox: queue.Queue = queue.Queue()
            created: queue.Queue = queue.Queue()
            finisher = Finisher(clients, region.name, plan)
            planned = {p.spec.name: p.copy_prunes[region.name] for p in plan.servers}
            care = Housekeeping(region.ec2, finisher, existing[region.name], planned, plan.prune)
            worker = HousekeepingThread(care)
            args = (region, clients.region, inbox, created, self.copies)
            threading.Thread(target=copy_all, args=args, daemon=True).start()
            follower = threading.Thread(
                target=self._follow, args=(region, created, config, worker), daemon=True
            )
            follower.start()
            self.lanes.append((inbox, follower, worker))

    def _follow(
        self, region: Region, created: queue.Queue, config: BackupConfig, worker: HousekeepingThread
    ) -> None:
        try:
            follow_up(region.ec2, created, config, worker.submit, pending_ok=True)
        except Exception as err:  # a bug must not pass for success
            log.debug("following copies in %s", region.name, exc_info=True)
            self.errors.append(
                f"{region.name}: following copies failed: {type(err).__name__}: {err}"
            )

    def submit(self, out: Outcome) -> None:
        """Copy a server's new backup, if it is available."""
        if not out.error and out.image is not None and out.image.state == AVAILABLE:
            for inbox, _, _ in self.lanes:
                inbox.put(out)

    def finish(self) -> list[Outcome]:
        """No more backups: wait for every copy to settle and every region to be pruned."""
        for inbox, _, _ in self.lanes:
            inbox.put(None)
        for _, follower, worker in self.lanes:
            follower.join()
            worker.finish()
        return sorted(self.copies, key=lambda c: (c.name, c.region or ""))


class Finisher:
    """Shares and deprecates one region's available images as the config asks.

    Each image records whom the tool shared it with (TAG_SHARED_WITH), so a later
    run finishes images a run left pending, and follows SHARE_WITH_ACCOUNTS as it
    changes: accounts added are granted, accounts removed are revoked.
    """

    def __init__(self, clients: Clients, region: str | None, plan: BackupPlan) -> None:
        self.clients, self.region = clients, region
        self.ec2 = clients.client("ec2", region)
        self.accounts = set(plan.share_with)
        self.days = plan.deprecate_after_days
        self.protect = plan.protect
        self.key_managers: dict[str, str] = {}

    def finish(self, images: list[Image], out: Outcome) -> None:
        """Deprecate and share each image that needs it; a failure is reported, not fatal."""
        where = f" in {self.region}" if self.region else ""
        for image in images:
            try:
                if self.days and not image.deprecation_time:
                    self.deprecate(image)
                if self.protect and not image.protected:
                    self.ec2.enable_image_deregistration_protection(
                        ImageId=image.image_id, WithCooldown=False
                    )  # without: retention may disable it and deregister at once
                    image.protection = "enabled-without-cooldown"
                if image.shared_with != self.accounts:
                    self.share(image, out, where)
            except (ClientError, BotoCoreError) as err:
                out.fail_late(
                    f"could not deprecate, protect or share {image.image_id}{where}: "
                    f"{error_text(err)}"
                )

    def deprecate(self, image: Image) -> None:
        """EnableImageDeprecation DEPRECATE_AFTER_DAYS after the backup was taken."""
        taken = parse_time(image.tags.get(TAG_CREATED, ""))
        taken = image.created if taken.year == 1 else taken
        when = max(taken + timedelta(days=self.days), datetime.now(timezone.utc) + DEPRECATE_LEAD)
        self.ec2.enable_image_deprecation(ImageId=image.image_id, DeprecateAt=when)
        image.deprecation_time = stamp(when)
        log.info("%s: %s deprecates at %s", image.server, image.image_id, stamp(when))

    def share(self, image: Image, out: Outcome, where: str) -> None:
        """Grant and revoke launch and create-volume permissions to match SHARE_WITH_ACCOUNTS."""
        add, remove = self.accounts - image.shared_with, image.shared_with - self.accounts
        if add and image.encrypted and self.aws_managed_key(image):
            out.warn(
                f"{image.image_id}{where} is encrypted with the AWS-managed KMS key (aws/ebs), "
                f"which cannot be shared: not shared with {', '.join(sorted(add))}. Encrypt "
                "with a customer-managed key (COPY_TO_REGIONS kms_key_id) whose policy lets "
                "those accounts use it"
            )
            add = set()
        if add:
            grant = [{"UserId": account} for account in sorted(add)]
            self.ec2.modify_image_attribute(ImageId=image.image_id, LaunchPermission={"Add": grant})
            for snapshot_id in image.snapshot_ids:
                self.ec2.modify_snapshot_attribute(
                    SnapshotId=snapshot_id, Attribute="createVolumePermission",
                    OperationType="add", UserIds=sorted(add),
                )  # fmt: skip
        if remove:
            revoke_sharing(self.ec2, image, remove)
        if add or remove:
            shared = sorted((image.shared_with | add) - remove)
            value = f"{image.image_id}:{','.join(shared)}"
            self.ec2.create_tags(
                Resources=[image.image_id], Tags=[{"Key": TAG_SHARED_WITH, "Value": value}]
            )
            image.tags[TAG_SHARED_WITH] = value
            log.info(
                "%s: %s%s shared with %s",
                out.name,
                image.image_id,
                where,
                ", ".join(shared) or "no account",
            )

    def aws_managed_key(self, image: Image) -> bool:
        """Whether a snapshot of the image is encrypted with an AWS-managed KMS key."""
        if not image.snapshot_ids:
            return False  # DescribeSnapshots without ids would list the whole account
        snapshots = self.ec2.describe_snapshots(SnapshotIds=image.snapshot_ids)["Snapshots"]
        kms = self.clients.client("kms", self.region)
        for key in {s["KmsKeyId"] for s in snapshots if s.get("KmsKeyId")}:
            if key not in self.key_managers:
                metadata = kms.describe_key(KeyId=key)["KeyMetadata"]
                self.key_managers[key] = metadata.get("KeyManager", "")
            if self.key_managers[key] == KEY_MANAGER_AWS:
                return True
        return False


def revoke_sharing(ec2: Any, image: Image, accounts: set[str]) -> None:
    """Take back the launch and create-volume permissions the tool granted to accounts."""
    users = sorted(accounts)
    if image.state != DISABLED:  # DisableImage took its launch permissions already
        ec2.modify_image_attribute(
            ImageId=image.image_id, LaunchPermission={"Remove": [{"UserId": u} for u in users]}
        )
    for snapshot_id in image.snapshot_ids:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission",
            OperationType="remove", UserIds=users,
        )  # fmt: skip


# --- Consistency through SSM: VSS on Windows, pre/post scripts anywhere ----------------------

SSM_ONLINE, SSM_SUCCESS = "Online", "Success"
SSM_RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}
DOC_SHELL, DOC_POWERSHELL, DOC_VSS = (
    "AWS-RunShellScript",
    "AWS-RunPowerShellScript",
    "AWSEC2-CreateVssSnapshot",
)
ERR_NO_INVOCATION = "InvocationDoesNotExist"  # just sent: not visible yet
SSM_IDS_MAX = 50  # instance ids per DescribeInstanceInformation filter, and its largest page
SSM_OPT_IN_TAG = "ec2-to-ami-commands"  # "allow" on an instance: the policy lets commands run
SSM_NEEDS = "SSM Agent running and an instance profile with AmazonSSMManagedInstanceCore"
VSS_NEEDS = "; for vss also the AwsVssComponents package and AWSEC2VssSnapshotPolicy"
VSS_TAG_ROOM = 3  # the VSS document adds AppConsistent and AwsVssConfig (Device on snapshots)


def back_up(
    clients: Clients, planned: ServerPlan, config: BackupConfig, now: datetime, out: Outcome
) -> None:
    """Make one server's planned image the way its consistency asks."""
    mode = planned.spec.consistency
    if mode == "scripts":
        backup_with_scripts(clients, planned, config, now, out)
    elif mode == "vss":
        backup_with_vss(clients, planned, config, now, out)
    else:
        create_backup(clients.ec2, planned, config, out, no_reboot=mode == "crash")


def platform_of(server: Server) -> str:
    """windows or linux: from SERVERS if given, else from the instance."""
    return server.spec.platform or (
        "windows" if server.instance.get("Platform") == "windows" else "linux"
    )


def ssm_offline(ssm: Any, servers: list[Server]) -> dict[str, str]:
    """For each server SSM cannot reach now, the reason; one call per 50 servers."""
    online: set[str] = set()
    ids = [s.spec.instance_id for s in servers]
    try:
        for batch in chunked(ids, SSM_IDS_MAX):
            filters = [{"Key": "InstanceIds", "Values": batch}]
            for info in paginate(
                ssm, "describe_instance_information", "InstanceInformationList",
                Filters=filters, MaxResults=SSM_IDS_MAX,
            ):  # fmt: skip
                if info.get("PingStatus") == SSM_ONLINE:
                    online.add(info["InstanceId"])
    except (ClientError, BotoCoreError) as err:
        return {i: f"could not ask SSM about the instance: {error_text(err)}" for i in ids}
    return {
        s.spec.instance_id: (
            f"SSM cannot reach {s.spec.instance_id} (not a managed instance, or not online); "
            f"it needs {SSM_NEEDS}{VSS_NEEDS if s.spec.consistency == 'vss' else ''}"
        )
        for s in servers
        if s.spec.instance_id not in online
    }


def send(ssm: Any, instance_id: str, document: str, parameters: dict, timeout: int) -> str:
    """SendCommand to one instance; return the command id."""
    response = ssm.send_command(
        InstanceIds=[instance_id], DocumentName=document, Parameters=parameters,
        Comment=f"{TOOL} backup", TimeoutSeconds=max(30, timeout),
    )  # fmt: skip
    return response["Command"]["CommandId"]


def send_script(ssm: Any, server: Server, script: str, timeout: int) -> str:
    """Run a shell (Linux) or PowerShell (Windows) script through SSM Run Command."""
    document = DOC_POWERSHELL if platform_of(server) == "windows" else DOC_SHELL
    parameters = {"commands": [script], "executionTimeout": [str(timeout)]}
    return send(ssm, server.spec.instance_id, document, parameters, timeout)


def wait_command(ssm: Any, command_id: str, instance_id: str, timeout: int) -> str:
    """Poll one command until it ends; return its status ("TimedOut" if it outlasts timeout)."""
    deadline, delay = time.monotonic() + timeout + POLL_MAX_SECONDS, POLL_FIRST_SECONDS / 2
    while time.monotonic() < deadline:
        try:
            status = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)[
                "Status"
            ]
        except ClientError as err:
            if err.response["Error"]["Code"] != ERR_NO_INVOCATION:
                raise
            status = "Pending"
        if status not in SSM_RUNNING:
            return status
        time.sleep(delay)
        delay = min(delay * POLL_FACTOR, 5.0)
    return "TimedOut"


def backup_with_scripts(
    clients: Clients, planned: ServerPlan, config: BackupConfig, now: datetime, out: Outcome
) -> None:
    """Pre-script, then a no-reboot image, then the post-script, which runs whatever happened."""
    server, spec, timeout = planned.server, planned.spec, config.script_timeout_seconds
    pre_sent = False
    try:
        if spec.pre_script:
            command_id = send_script(clients.ssm, server, spec.pre_script, timeout)
            pre_sent = True
            status = wait_command(clients.ssm, command_id, spec.instance_id, timeout)
            failure = f"pre-script command {command_id} {status}"
            if status != SSM_SUCCESS and not script_failed(out, failure, config):
                return
        create_backup(clients.ec2, planned, config, out, no_reboot=True)
    finally:
        if spec.post_script and (pre_sent or not spec.pre_script):
            out.post_command = send_script(clients.ssm, server, spec.post_script, timeout)


def script_failed(out: Outcome, message: str, config: BackupConfig) -> bool:
    """Record a failed script; return whether to go on with a crash-consistent image."""
    if config.on_script_failure == "crash":
        out.warn(f"{message}; made a crash-consistent image instead")
        return True
    out.fail(message)
    return False


def backup_with_vss(
    clients: Clients, planned: ServerPlan, config: BackupConfig, now: datetime, out: Outcome
) -> None:
    """AWSEC2-CreateVssSnapshot makes the image; then the rest of the tool's tags go on it."""
    server, spec, timeout = planned.server, planned.spec, config.script_timeout_seconds
    if platform_of(server) != "windows":
        out.fail("consistency 'vss' needs a Windows instance; this one is linux")
        return
    name = planned.name
    identity = identity_tags(spec, config, now, out.run_id)
    if any(c in v for _, v in identity for c in ",;="):
        out.fail(f"server name {spec.name!r} has ',', ';' or '=', which VSS tags cannot carry")
        return
    parameters = {
        "CreateAmi": ["True"], "AmiName": [name], "executionTimeout": [str(timeout)],
        "description": [description(f"{TOOL} {config.schedule} VSS backup of {spec.name}")],
        "tags": [";".join(f"Key={k},Value={v}" for k, v in identity)],
    }  # fmt: skip
    command_id = send(clients.ssm, spec.instance_id, DOC_VSS, parameters, timeout)
    status = wait_command(clients.ssm, command_id, spec.instance_id, timeout)
    if status != SSM_SUCCESS:
        if script_failed(out, f"VSS command {command_id} {status}", config):
            create_backup(clients.ec2, planned, config, out, no_reboot=True)
        return
    tag_vss_image(clients.ec2, planned, out)


def tag_vss_image(ec2: Any, planned: ServerPlan, out: Outcome) -> None:
    """Find the image the VSS document made and give it and its snapshots the planned tags."""
    name = planned.name
    found = list(paginate(ec2, "describe_images", "Images", Owners=["self"],
                          Filters=[{"Name": "name", "Values": [name]}]))  # fmt: skip
    if not found:
        out.fail(f"the VSS command succeeded, but no image named {name} exists")
        return
    image = to_image(found[0])
    ec2.create_tags(Resources=[image.image_id, *image.snapshot_ids], Tags=planned.tags)
    out.made(image.image_id)


def check_post_scripts(
    ssm: Any, outcomes: list[Outcome], config: BackupConfig, since: datetime
) -> None:
    """Wait for every post-script at once, with one ListCommands a poll; record failures."""
    invoked_after = [{"key": "InvokedAfter", "value": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]
    pending = {o.post_command: o for o in outcomes if o.post_command}
    deadline, delay = time.monotonic() + config.script_timeout_seconds + POLL_MAX_SECONDS, 0.5
    while pending and time.monotonic() < deadline:
        for command in paginate(ssm, "list_commands", "Commands", Filters=invoked_after):
            out = pending.get(command["CommandId"])
            if out and command["Status"] not in SSM_RUNNING:
                if command["Status"] != SSM_SUCCESS:
                    out.fail_late(f"post-script command {command['CommandId']} {command['Status']}")
                del pending[command["CommandId"]]
        if pending:
            time.sleep(delay)
            delay = min(delay * POLL_FACTOR, 5.0)
    for command_id, out in pending.items():
        out.fail_late(f"post-script command {command_id} did not finish in time")


# --- Carrying out the plan: the creator, the follower, housekeeping, the report ---


def utc_now() -> datetime:
    """The time now, in UTC."""
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    """An id that no other run has: TAG_RUN on every image this run makes."""
    return secrets.token_hex(8)


def sweep_places(clients: Clients, regions: list[Region]) -> list[tuple[Any, str | None, str]]:
    """Where a run sweeps: (client, source region of the copies there, " in region")."""
    return [(clients.ec2, None, "")] + [(r.ec2, clients.region, f" in {r.name}") for r in regions]


def sweep_all(
    clients: Clients,
    regions: list[Region],
    config: BackupConfig,
    instance_of: dict[str, str],
    started: datetime,
) -> None:
    """Sweep orphaned snapshots of this pool in REGION and in each COPY_TO_REGIONS region."""
    for ec2, source_region, where in sweep_places(clients, regions):
        try:
            sweep_snapshots(ec2, config, instance_of, started, source_region, where)
        except (ClientError, BotoCoreError) as err:
            log.warning("sweep%s: could not look for orphans: %s", where, error_text(err))


def create_all(
    clients: Clients, plans: list[ServerPlan], outcomes: list[Outcome], config: BackupConfig,
    now: datetime, created: queue.Queue,
) -> None:  # fmt: skip
    """Start every server's planned image in turn (the client paces CreateImage); queue each
    outcome.

    Servers backed up through SSM come last, after one check that they are online,
    so their scripts never hold up the plain ones.
    """
    pairs = sorted(
        zip(plans, outcomes, strict=True), key=lambda p: p[0].spec.consistency in SSM_MODES
    )
    try:
        through_ssm = [p.server for p, _ in pairs if p.spec.consistency in SSM_MODES]
        offline = ssm_offline(clients.ssm, through_ssm) if through_ssm else {}
        for planned, out in pairs:
            try:
                reason = offline.get(planned.spec.instance_id)
                if planned.dropped_tags:
                    out.warn(f"50-tag limit: instance tags not copied: "
                             f"{', '.join(planned.dropped_tags)}")  # fmt: skip
                if reason:
                    out.fail(reason)
                else:
                    guarded(out, "backup failed", back_up, clients, planned, config, now, out)
            except Exception as err:  # a bug must not hide a server: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                out.fail(f"backup failed: unexpected {type(err).__name__}: {err}")
            created.put(out)
        if any(o.post_command for _, o in pairs):
            check_post_scripts(clients.ssm, [o for _, o in pairs], config, now)
    finally:
        created.put(ALL_CREATED)


def guarded(out: Outcome, what: str, func: Any, *args: Any) -> None:
    """Run one server's step; an AWS error fails that server only."""
    try:
        func(*args)
    except (ClientError, BotoCoreError) as err:
        out.fail(f"{what}: {error_text(err)}")


def check_requested(only: list[str], servers: list[Server], failures: list[Outcome]) -> None:
    """Every --server NAME given must have resolved to something."""
    known = {s.spec.name for s in servers} | {f.name for f in failures}
    for name in only or []:
        if name not in known:
            failures.append(Outcome(name, "-", error="no such server in SERVERS or SELECT_TAGS"))


class Housekeeping:
    """Shares, deprecates and prunes a server's images in one region, as each server settles."""

    def __init__(
        self, ec2: Any, finisher: Finisher, existing: list[Image],
        planned: dict[str, list[tuple[Image, str]]], prune: bool,
    ) -> None:  # fmt: skip
        self.ec2, self.finisher, self.existing = ec2, finisher, existing
        self.planned, self.prune = planned, prune

    def apply(self, out: Outcome) -> None:
        """Carry out a server's planned prunes once its new image is verified, and finish
        the images it keeps; a server whose image is not verified loses only failed ones."""
        images = {i.image_id: i for i in self.existing if i.server == out.name}
        if out.image:
            images[out.image.image_id] = out.image
        doomed = self.planned.get(out.name, [])
        verified = not out.error and out.image is not None and out.image.state == AVAILABLE
        if not verified:
            doomed = [(image, reason) for image, reason in doomed if image.state == FAILED]
            if out.image is not None and out.image.state == FAILED:
                doomed.append((out.image, "state failed"))
        if not self.prune:
            doomed = []
        going = {image.image_id for image, _ in doomed}
        kept = [i for i in images.values() if i.state == AVAILABLE and i.image_id not in going]
        self.finisher.finish(kept, out)
        prune(self.ec2, doomed, out)


class HousekeepingThread:
    """Applies Housekeeping to each settled server in a thread of its own.

    So deregistrations, paced by their own EC2 bucket, run side by side with
    the creates and never hold up the polls.
    """

    def __init__(self, care: Housekeeping) -> None:
        self.care = care
        self.queue: queue.Queue[Outcome | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, out: Outcome) -> None:
        """Look after this server when the thread gets to it."""
        self.queue.put(out)

    def finish(self) -> None:
        """Wait until every submitted server is looked after."""
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (out := self.queue.get()) is not None:
            try:
                self.care.apply(out)
            except Exception as err:  # a bug must not hide a server: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                out.fail(f"pruning failed: unexpected {type(err).__name__}: {err}")


def report(
    outcomes: list[Outcome], copies: Sequence[Outcome] = (), errors: Sequence[str] = ()
) -> int:
    """Log one line per server and per copy, and a summary; return the exit code."""
    for out in [*outcomes, *copies]:
        if not out.error and not out.image_id:
            out.fail("no backup was made")  # never report a server as done without an image
        if out.late_errors:
            out.fail("; ".join(out.late_errors))
    for out in outcomes:
        for warning in out.warnings:
            log.warning("%s (%s): %s", out.name, out.instance_id, warning)
        if out.error:
            log.error("%s (%s): FAILED: %s", out.name, out.instance_id, out.error)
        else:
            pruned = f"; pruned {', '.join(out.pruned)}" if out.pruned else ""
            log.info("%s (%s): backed up as %s%s", out.name, out.instance_id, out.image_id, pruned)
    report_copies(copies)
    for error in errors:
        log.error("%s", error)
    failed = [o for o in outcomes if o.error]
    failed_copies = [c for c in copies if c.error]
    level = logging.ERROR if failed or failed_copies or errors else logging.INFO
    log.log(
        level,
        "%d server(s): %d backed up, %d failed",
        len(outcomes),
        len(outcomes) - len(failed),
        len(failed),
    )
    if copies:
        pending = [c for c in copies if not c.error and (not c.image or c.image.state == PENDING)]
        done = len(copies) - len(failed_copies) - len(pending)
        log.log(level, "%d copies: %d available, %d pending, %d failed", len(copies), done,
                len(pending), len(failed_copies))  # fmt: skip
    return EXIT_FAILED if failed or failed_copies or errors else EXIT_OK


def report_copies(copies: Sequence[Outcome]) -> None:
    """One line per copy: available, left pending, or failed, and what its region pruned."""
    for copy in copies:
        who = f"{copy.name} ({copy.instance_id}) in {copy.region}"
        for warning in copy.warnings:
            log.warning("%s: %s", who, warning)
        pruned = f"; pruned {', '.join(copy.pruned)}" if copy.pruned else ""
        if copy.error:
            log.error("%s: copy FAILED: %s", who, copy.error)
        elif not copy.image or copy.image.state == PENDING:
            log.info("%s: copy %s still pending%s", who, copy.image_id, pruned)
        else:
            log.info("%s: copied as %s%s", who, copy.image_id, pruned)


# --- Dry run and listing -----------------------------------------------------------------


def print_plan(plan: BackupPlan, regions: list[Region]) -> None:
    """Print the plan, as --dry-run: what the run would create, tag, copy, share and remove.

    -v adds each new image's tags (tag values are the instance's and the config's,
    never user data)."""
    for server in plan.servers:
        spec = server.spec
        mode = CONSISTENCY_WORDS[spec.consistency]
        print(f"Would create image {server.name} of {spec.instance_id} ({spec.name}, {mode})")
        log.debug("  with tags %s", ", ".join(f"{t['Key']}={t['Value']}" for t in server.tags))
        if server.dropped_tags:
            print(f"  without instance tags {', '.join(server.dropped_tags)}: 50-tag limit")
        if server.deprecate_at:
            print(f"  deprecated, with its copies, at {stamp(server.deprecate_at)}")
        for image, reason in server.prunes:
            print_prune(image, reason, spec.name, "")
        for region in regions:
            key = f", encrypted with {region.kms_key_id}" if region.kms_key_id else ""
            print(f"Would copy {server.name} ({spec.name}) to {region.name}{key}")
            for image, reason in server.copy_prunes[region.name]:
                print_prune(image, reason, spec.name, f" in {region.name}")
    for out in plan.failures:
        print(f"Would fail {out.name} ({out.instance_id}): {out.error}")
    if plan.share_with:
        accounts = ", ".join(sorted(plan.share_with))
        print(f"Would share each new image and copy with {accounts}")
    if plan.protect:
        print("Would protect each new image and copy from deregistration (without cooldown)")


def print_prune(image: Image, reason: str, server: str, where: str) -> None:
    """One planned deregistration, as prune() will carry it out."""
    what = f"{image.image_id} ({image.name}) of {server}{where}: {reason}"
    held = protection_hold(image)
    if held:
        print(f"Would keep {what}, since it {held}")
    elif image.protected:
        print(f"Would deregister {what}, lifting its deregistration protection")
    else:
        print(f"Would deregister {what}")


def print_sweep_plan(
    clients: Clients,
    regions: list[Region],
    config: BackupConfig,
    instance_of: dict[str, str],
    now: datetime,
) -> None:
    """Print the orphaned snapshots the sweep would delete, in each region."""
    for ec2, source_region, where in sweep_places(clients, regions):
        for snapshot_id in find_orphans(ec2, config, instance_of, now, source_region):
            print(f"Would delete orphaned snapshot {snapshot_id}{where}")


def list_backups(
    clients: Clients, config: BackupConfig, only: list[str], recycle_bin: bool = False
) -> int:
    """Print a table of managed backups per server and region, newest first; with
    recycle_bin also the images each region's Recycle Bin holds."""
    found = [(clients.region, i) for i in managed_images(clients.ec2, None) if not i.source_region]
    for region in destination_regions(clients, config):
        found += [(region.name, i) for i in copies_in(region, config, clients.region, None)]
    found = [(r, i) for r, i in found if not only or i.server in only]
    found.sort(
        key=lambda ri: (ri[1].server, ri[0] != clients.region, ri[0], -ri[1].created.timestamp())
    )
    images = [i for _, i in found]
    rows = [("SERVER", "REGION", "IMAGE", "NAME", "CREATED", "STATE", "SCHEDULE", "VERIFIED")]
    for region, i in found:
        created = i.created.strftime("%Y-%m-%d %H:%M:%S")
        verified = verified_summary(i.tags.get(TAG_VERIFIED))
        rows.append((i.server, region, i.image_id, i.name, created, i.state, i.schedule, verified))
    print_table(rows)
    if not images:
        print("(no managed backups)")
    if recycle_bin:
        regions = [(clients.region, clients.ec2)]
        regions += [(r.name, r.ec2) for r in destination_regions(clients, config)]
        print_recycle_bins(regions)
    return EXIT_OK


def verified_summary(value: str | None) -> str:
    """A drill's TAG_VERIFIED value for a listing: when, and ok or failed ("-": never)."""
    if not value:
        return "-"
    when, _, rest = value.partition(" ")
    return f"{when.replace('T', ' ').rstrip('Z')[:16]} {rest.split(' ', 1)[0]}".strip()


def print_recycle_bins(regions: list[tuple[str, Any]]) -> None:
    """The images in each region's Recycle Bin (deregistered, kept by a retention rule).
    EC2 lists them without tags, so all are shown, by name; ami_to_ec2.py --ami restores
    one."""
    rows = [("REGION", "IMAGE", "NAME", "DELETED", "LEAVES THE BIN")]
    for name, ec2 in regions:
        for image in paginate(ec2, "list_images_in_recycle_bin", "Images"):
            entered, leaves = image.get("RecycleBinEnterTime"), image.get("RecycleBinExitTime")
            rows.append((name, image["ImageId"], image.get("Name", ""),
                         f"{entered:%Y-%m-%d %H:%M}" if entered else "-",
                         f"{leaves:%Y-%m-%d %H:%M}" if leaves else "-"))  # fmt: skip
    print()
    if len(rows) == 1:
        print("(no images in the Recycle Bin)")
        return
    print("In the Recycle Bin (ami_to_ec2.py --ami ID restores one):")
    print_table(rows)


# --- Cost: what the kept backups store, and what that costs a month -------------------------
# EBS bills the unique blocks that a volume's snapshots hold together. The EBS direct APIs
# count them in 512 KiB blocks: ListSnapshotBlocks gives the blocks of the oldest kept
# snapshot, and ListChangedBlocks what each later one wrote; their sum is what the kept
# snapshots hold. Snapshots in the archive tier are full copies, priced apart.


@dataclass(frozen=True)
class Kept:
    """One snapshot of a kept backup, in its volume's lineage."""

    snapshot_id: str
    schedule: str
    archived_bytes: int | None  # None: in the standard tier


@dataclass
class CostRow:
    """What one server's backups of one schedule hold in one region, and cost a month."""

    server: str
    schedule: str
    region: str
    backups: int = 0
    volumes: int = 0
    size_gib: int = 0  # the newest backup's volumes, in full
    stored_blocks: int = 0  # standard tier: unique blocks this schedule's snapshots add
    archived_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def monthly(self, config: BackupConfig) -> float:
        """The estimated cost a month, at the configured prices."""
        stored = self.stored_blocks * BLOCK_BYTES / GIB
        archived = self.archived_bytes / GIB
        prices = config.snapshot_price_gb_month, config.archive_price_gb_month
        return stored * prices[0] + archived * prices[1]


COST_NOTE = """
Stored: the unique 512 KiB blocks the kept snapshots hold together, counted with the EBS
direct APIs; each schedule's row has the blocks its own snapshots add to the ones before
them. An estimate: blocks that other snapshots of the same volumes (another tool's) also
hold are counted here, though EBS bills them once; an archived snapshot is billed in full
(FullSnapshotSizeInBytes), for at least 90 days. Prices: USD {0} (standard) and {1}
(archive) per GiB-month, from SNAPSHOT_PRICE_GB_MONTH and ARCHIVE_PRICE_GB_MONTH.
"""


def cost_report(clients: Clients, config: BackupConfig, only: list[str], as_json: bool) -> int:
    """Print what each server's kept backups store and cost a month, per schedule and region;
    exit 1 if any volume could not be measured."""
    rows: list[CostRow] = []
    places = [(clients.region, clients.ec2, managed_images(clients.ec2, None))]
    places += [(r.name, r.ec2, copies_in(r, config, clients.region, None))
               for r in destination_regions(clients, config)]  # fmt: skip
    for region, ec2, images in places:
        kept = [i for i in images if i.state in COSTED_STATES and (not only or i.server in only)]
        if region == clients.region:
            kept = [i for i in kept if not i.source_region]
        rows += region_costs(clients.client("ebs", region), ec2, region, kept)
    named = {s.name for s in config.servers if not only or s.name in only}
    rows += [CostRow(name, config.schedule, clients.region) for name in
             sorted(named - {r.server for r in rows if r.region == clients.region})]  # fmt: skip
    rows.sort(key=lambda r: (r.server, r.region != clients.region, r.region, r.schedule))
    (print_cost_json if as_json else print_cost)(rows, config)
    return EXIT_FAILED if any(r.errors for r in rows) else EXIT_OK


def region_costs(ebs: Any, ec2: Any, region: str, images: list[Image]) -> list[CostRow]:
    """The cost rows of one region's kept backups: each volume's lineage measured once."""
    facts = snapshot_facts(ec2, [s for i in images for s in i.devices.values()])
    rows: dict[tuple[str, str], CostRow] = {}
    lineages: dict[tuple[str, str, str], list[Kept]] = {}
    for image in sorted(images, key=lambda i: i.created):
        row = rows.setdefault((image.server, image.schedule),
                              CostRow(image.server, image.schedule, region))  # fmt: skip
        row.backups += 1
        row.volumes = max(row.volumes, len(image.devices))
        row.size_gib = 0  # the newest backup's, as images come oldest first
        for device, snapshot_id in image.devices.items():
            size, archived = facts.get(snapshot_id, (0, None))
            row.size_gib += size
            kept = Kept(snapshot_id, image.schedule, archived)
            lineages.setdefault((image.server, image.instance_id, device), []).append(kept)
    standard = {key: [k for k in chain if k.archived_bytes is None]
                for key, chain in lineages.items()}  # fmt: skip
    with ThreadPoolExecutor(COST_THREADS) as pool:
        counts = pool.map(lambda chain: measure(ebs, chain), standard.values())
        measured = dict(zip(standard, counts, strict=True))
    for key, chain in lineages.items():
        (server, _, device), (added, error) = key, measured[key]
        for kept, blocks in zip(standard[key], added, strict=False):
            rows[(server, kept.schedule)].stored_blocks += blocks
        for kept in chain:
            rows[(server, kept.schedule)].archived_bytes += kept.archived_bytes or 0
        if error:
            log.error("%s in %s: %s: %s", server, region, device, error)
            for schedule in {k.schedule for k in chain}:
                rows[(server, schedule)].errors.append(f"{device}: {error}")
    return list(rows.values())


def snapshot_facts(ec2: Any, snapshot_ids: list[str]) -> dict[str, tuple[int, int | None]]:
    """Each snapshot's volume size (GiB) and, if archived, its full size in bytes."""
    facts: dict[str, tuple[int, int | None]] = {}
    for chunk in chunked(sorted(set(snapshot_ids))):
        filters = [{"Name": "snapshot-id", "Values": chunk}]
        for snap in paginate(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"],
                             Filters=filters):  # fmt: skip
            archived = snap.get("StorageTier") == ARCHIVE_TIER
            full = snap.get("FullSnapshotSizeInBytes") or snap["VolumeSize"] * GIB  # at most
            facts[snap["SnapshotId"]] = (snap["VolumeSize"], full if archived else None)
    return facts


def measure(ebs: Any, standard: list[Kept]) -> tuple[list[int], str | None]:
    """The blocks each standard-tier snapshot of a lineage adds to the ones before it (the
    oldest: all of its blocks), oldest first; and the error that stopped the count, if any."""
    added: list[int] = []
    for before, kept in zip([None, *standard], standard, strict=False):
        try:
            added.append(added_blocks(ebs, before, kept))
        except ClientError as err:
            if err.response["Error"]["Code"] in DIRECT_ACCESS_DENIED:
                raise  # the policy, not this volume: main() says so once
            return added, f"{error_text(err)} (snapshot {kept.snapshot_id})"
    return added, None


def added_blocks(ebs: Any, before: Kept | None, kept: Kept) -> int:
    """The blocks a snapshot holds that the one before it does not."""
    if before is not None:
        try:
            pages = direct_pages(ebs, "list_changed_blocks", "ChangedBlocks",
                                 FirstSnapshotId=before.snapshot_id,
                                 SecondSnapshotId=kept.snapshot_id)  # fmt: skip
            return sum(1 for block in pages if "SecondBlockToken" in block)
        except ClientError as err:
            if err.response["Error"]["Code"] != ERR_DIRECT_VALIDATION:
                raise
            log.debug("%s and %s: %s", before.snapshot_id, kept.snapshot_id, error_text(err))
    # The oldest, or one of a new lineage (the volume was replaced): all of its blocks.
    return sum(1 for _ in direct_pages(ebs, "list_snapshot_blocks", "Blocks",
                                       SnapshotId=kept.snapshot_id))  # fmt: skip


def direct_pages(ebs: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict]:
    """Every entry of every page of an EBS direct API list (botocore has no paginator)."""
    token = None
    while True:
        more = {"NextToken": token} if token else {}
        page = getattr(ebs, operation)(MaxResults=DIRECT_RESULTS_MAX, **kwargs, **more)
        yield from page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return


def print_cost(rows: list[CostRow], config: BackupConfig) -> None:
    """The cost table, a total line, and what the figures are."""
    table = [("SERVER", "SCHEDULE", "REGION", "BACKUPS", "VOLUMES", "SIZE GiB", "STORED GiB",
              "ARCHIVED GiB", "USD/MONTH")]  # fmt: skip
    for row in rows:
        stored = row.stored_blocks * BLOCK_BYTES / GIB
        money = "?" if row.errors else f"{row.monthly(config):.2f}"
        table.append((row.server, row.schedule, row.region, str(row.backups), str(row.volumes),
                      str(row.size_gib), "?" if row.errors else f"{stored:.2f}",
                      f"{row.archived_bytes / GIB:.2f}", money))  # fmt: skip
    total = cost_total(rows, config)
    table.append(("TOTAL", "", "", str(total["backups"]), "", str(total["size_gib"]),
                  f"{total['stored_gib']:.2f}", f"{total['archived_gib']:.2f}",
                  f"{total['usd_per_month']:.2f}"))  # fmt: skip
    print_table(table)
    print(cost_note(config))


def cost_total(rows: list[CostRow], config: BackupConfig) -> dict[str, Any]:
    """The sums over every row (a row that could not be measured counts as measured so far)."""
    return {
        "backups": sum(r.backups for r in rows),
        "size_gib": sum(r.size_gib for r in rows),
        "stored_gib": round(sum(r.stored_blocks for r in rows) * BLOCK_BYTES / GIB, 3),
        "archived_gib": round(sum(r.archived_bytes for r in rows) / GIB, 3),
        "usd_per_month": round(sum(r.monthly(config) for r in rows), 2),
    }


def cost_note(config: BackupConfig) -> str:
    """What the figures are, with the prices used."""
    return COST_NOTE.format(config.snapshot_price_gb_month, config.archive_price_gb_month)


def print_cost_json(rows: list[CostRow], config: BackupConfig) -> None:
    """The cost report as one JSON document."""
    document = {
        "prices_usd_per_gib_month": {
            "standard": config.snapshot_price_gb_month,
            "archive": config.archive_price_gb_month,
        },
        "rows": [
            {
                "server": r.server,
                "schedule": r.schedule,
                "region": r.region,
                "backups": r.backups,
                "volumes": r.volumes,
                "size_gib": r.size_gib,
                "stored_blocks": r.stored_blocks,
                "stored_gib": round(r.stored_blocks * BLOCK_BYTES / GIB, 3),
                "archived_gib": round(r.archived_bytes / GIB, 3),
                "usd_per_month": round(r.monthly(config), 2),
                "errors": r.errors,
            }
            for r in rows
        ],
        "total": cost_total(rows, config),
        "note": cost_note(config).strip(),
    }
    print(json.dumps(document, indent=2))


# --- Monitoring: --check, the state file, CloudWatch metrics --------------------------------


def run_check(
    clients: Clients,
    config: BackupConfig,
    args: argparse.Namespace,
    others: list[tuple[str, BackupConfig]],
) -> int:
    """--check: is every server's newest backup (and copy) within RPO_HOURS, does a config
    cover every instance, and did the last run succeed in time? Only describe calls."""
    now, rpo = utc_now(), config.rpo_hours or 0.0
    ec2 = clients.ec2
    servers, failures = discover(ec2, config, args.server, now)
    check_requested(args.server, servers, failures)
    instance_of = {s.spec.name: s.spec.instance_id for s in servers}
    instance_of.update({o.name: o.instance_id for o in failures})
    listed = [i for i in managed_images(ec2, config.schedule) if not i.source_region]
    natives = [i for i in listed if in_pool(i, config.pool, instance_of)]
    named = [(s.spec.name, s.spec.instance_id, "") for s in servers]
    named += [(o.name, o.instance_id, o.error or "") for o in failures]
    rows = [freshness(n, i, clients.region, natives, rpo, now, why) for n, i, why in named]
    for region in destination_regions(clients, config):
        copies = copies_in(region, config, clients.region, instance_of)
        rows += [freshness(n, i, region.name, copies, rpo, now, why) for n, i, why in named]
    coverage = Coverage.of(describe_instances(ec2, LIVE_FILTER), config, others, clients.region)
    last = LastRun.read(config.state_file, rpo, now)
    if config.metrics_namespace:
        ages = {r.server: r.age_hours for r in rows if r.region == clients.region}
        put_metrics(clients, config, age_metrics(config, ages, now))
    return print_check(rows, coverage, last, clients.region, config, args)


LIVE_FILTER = [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]
FRESH, STALE, MISSING, FAILING = "fresh", "stale", "missing", "failing"


@dataclass
class Freshness:
    """One server's newest available backup in one region, against RPO_HOURS."""

    server: str
    instance_id: str
    region: str
    image_id: str | None
    created: datetime | None
    age_hours: float | None
    status: str  # FRESH, STALE, MISSING, or FAILING: the run cannot back it up
    note: str = ""


def freshness(
    server: str,
    instance_id: str,
    region: str,
    images: list[Image],
    rpo: float,
    now: datetime,
    failing: str,
) -> Freshness:
    """How old a server's newest available backup among images is, and what that means."""
    mine = [i for i in images if i.server == server and i.state == AVAILABLE]
    newest = max(mine, key=lambda i: (i.created, i.image_id), default=None)
    if newest is None:
        status = FAILING if failing else MISSING
        return Freshness(server, instance_id, region, None, None, None, status, failing)
    age = (now - newest.created).total_seconds() / 3600
    status = FAILING if failing else STALE if age > rpo else FRESH
    return Freshness(
        server, instance_id, region, newest.image_id, newest.created, age, status, failing
    )


@dataclass
class Coverage:
    """The region's live instances that no config backs up, and those left out on purpose."""

    uncovered: list[dict]
    opted_out: list[dict]  # carry OPT_OUT_TAG
    autoscaled: list[dict]  # launched by an Auto Scaling group: replaced, not restored
    notes: list[str]

    @classmethod
    def of(
        cls,
        instances: list[dict],
        config: BackupConfig,
        others: list[tuple[str, BackupConfig]],
        region: str,
    ) -> Coverage:
        """Sort instances by whether this config or one of the others covers them."""
        configs, notes = [config], []
        for path, other in others:
            if other.region and other.region != region:
                notes.append(f"{path} backs up {other.region}, not {region}: not counted")
            else:
                configs.append(other)
        coverage = cls([], [], [], notes)
        for instance in instances:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            if TAG_DRILL in tags or any(covers(c, instance["InstanceId"], tags) for c in configs):
                continue  # a drill instance is a short-lived test copy, not a server
            row = {
                "instance_id": instance["InstanceId"],
                "name": tags.get("Name", ""),
                "state": instance["State"]["Name"],
            }
            if OPT_OUT_TAG in tags:
                coverage.opted_out.append(row)
            elif ASG_TAG in tags:
                coverage.autoscaled.append({**row, "group": tags[ASG_TAG]})
            else:
                coverage.uncovered.append(row)
        return coverage


# On an instance, any value: --check lists it apart instead of as not backed up.
OPT_OUT_TAG = "ec2-to-ami:skip"
ASG_TAG = "aws:autoscaling:groupName"


def covers(config: BackupConfig, instance_id: str, tags: dict[str, str]) -> bool:
    """Whether a config backs up an instance: SERVERS lists it, or it has all SELECT_TAGS."""
    if any(s.instance_id == instance_id for s in config.servers):
        return True
    return bool(config.select_tags) and all(tags.get(k) == v for k, v in config.select_tags.items())


@dataclass
class LastRun:
    """The last backup run, as its STATE_FILE records it, and what --check makes of it."""

    path: str | None
    record: dict | None
    problem: str | None

    @classmethod
    def read(cls, path: str | None, rpo: float, now: datetime) -> LastRun:
        """Read STATE_FILE; a run that failed, or none within 2 x RPO_HOURS, is a problem."""
        if path is None:
            return cls(None, None, None)
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            finished = parse_time(record["finished"])
            code = record["exit_code"]
        except FileNotFoundError:
            return cls(path, None, f"no run recorded in {path}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            return cls(path, None, f"cannot read {path}: {err}")
        hours = (now - finished).total_seconds() / 3600
        if hours > 2 * rpo:
            return cls(path, record, f"the last run was {hours:.1f} h ago (2 x RPO: {2 * rpo:g} h)")
        if code != EXIT_OK:
            return cls(path, record, f"the last run, {hours:.1f} h ago, exited {code}")
        return cls(path, record, None)


def print_check(
    rows: list[Freshness], coverage: Coverage, last: LastRun, home: str, config: BackupConfig,
    args: argparse.Namespace,
) -> int:  # fmt: skip
    """Print the summary line first (for Nagios and mail subjects), then the tables;
    -q prints nothing when all is well. Return 0 all fresh, 1 otherwise."""
    rpo = config.rpo_hours or 0.0
    problems = [
        f"{r.server}{'' if r.region == home else ' in ' + r.region}: {describe_freshness(r, rpo)}"
        for r in rows
        if r.status != FRESH
    ]
    if not rows:
        problems.append(f"the config selects no server (SELECT_TAGS {dict(config.select_tags)} "
                        "matches no live instance)")  # fmt: skip
    problems += [
        f"{u['instance_id']} ({u['name'] or 'no Name'}): no config backs it up"
        for u in coverage.uncovered
    ]
    if last.problem:
        problems.append(last.problem)
    summary = (
        f"PROBLEM: {'; '.join(problems)}"
        if problems
        else f"OK: {len(rows)} backup(s) within RPO {rpo:g} h"
    )
    if args.json:
        print(json.dumps(check_document(rows, coverage, last, rpo, problems, summary), indent=2))
    elif problems or not args.quiet:
        print(summary)
        print_check_tables(rows, coverage, last, rpo)
    return EXIT_FAILED if problems else EXIT_OK


def describe_freshness(row: Freshness, rpo: float) -> str:
    """A row's status in words."""
    if row.status == FAILING:
        return f"the backup run fails for it ({row.note})"
    if row.status == MISSING:
        return "no available backup"
    return f"newest backup {row.image_id} is {row.age_hours:.1f} h old (RPO {rpo:g} h)"


def print_check_tables(
    rows: list[Freshness], coverage: Coverage, last: LastRun, rpo: float
) -> None:
    """The freshness table, the instances left out, and the last run."""
    table = [("SERVER", "REGION", "NEWEST BACKUP", "CREATED (UTC)", "AGE", "RPO", "STATUS")]
    for r in rows:
        created = r.created.strftime("%Y-%m-%d %H:%M") if r.created else "-"
        age = f"{r.age_hours:.1f}h" if r.age_hours is not None else "-"
        table.append((r.server, r.region, r.image_id or "-", created, age, f"{rpo:g}h", r.status))
    print_table(table)
    for title, found in (
        ("Not backed up by any config", coverage.uncovered),
        (f"Opted out ({OPT_OUT_TAG})", coverage.opted_out),
        ("In an Auto Scaling group (not counted)", coverage.autoscaled),
    ):
        if found:
            print(f"{title}:")
            for row in found:
                group = f" (group {row['group']})" if "group" in row else ""
                print(f"  {row['instance_id']}  {row['name'] or '-'}  {row['state']}{group}")
    for note in coverage.notes:
        print(f"Note: {note}")
    if last.record:
        r = last.record
        print(
            f"Last run: finished {r['finished']}, exit {r['exit_code']}, "
            f"{r.get('servers_backed_up', '?')} backed up, {r.get('servers_failed', '?')} "
            f"failed, {r.get('images_pruned', '?')} pruned"
        )
    if last.problem:
        print(f"Last run: {last.problem}")


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as left-aligned columns."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def check_document(
    rows: list[Freshness],
    coverage: Coverage,
    last: LastRun,
    rpo: float,
    problems: list[str],
    summary: str,
) -> dict:
    """--check --json: everything the tables show, and the problems."""
    return {
        "ok": not problems,
        "summary": summary,
        "rpo_hours": rpo,
        "backups": [
            {
                **vars(r),
                "created": stamp(r.created) if r.created else None,
                "age_hours": round(r.age_hours, 2) if r.age_hours is not None else None,
            }
            for r in rows
        ],
        "uncovered": coverage.uncovered,
        "opted_out": coverage.opted_out,
        "autoscaled": coverage.autoscaled,
        "notes": coverage.notes,
        "last_run": {"state_file": last.path, "record": last.record, "problem": last.problem},
        "problems": problems,
    }


def record_run(
    clients: Clients,
    config: BackupConfig,
    started: datetime,
    code: int,
    outcomes: Sequence[Outcome] = (),
    copies: Sequence[Outcome] = (),
    natives: Sequence[Image] = (),
) -> None:
    """After a run: write STATE_FILE, and put the run's metrics if METRICS_NAMESPACE is set.
    Neither changes the exit code; a failure is a warning (and the alarms see missing data)."""
    finished = utc_now()
    seconds = (finished - started).total_seconds()
    counts = {
        "servers_backed_up": sum(1 for o in outcomes if not o.error),
        "servers_failed": sum(1 for o in outcomes if o.error),
        "images_pruned": sum(len(o.pruned) for o in [*outcomes, *copies]),
    }
    if config.state_file:
        record = {
            "version": 1,
            "pool": config.pool,
            "schedule": config.schedule,
            "started": stamp(started),
            "finished": stamp(finished),
            "exit_code": code,
            **counts,
            "run_seconds": round(seconds, 1),
        }
        write_state(config.state_file, record)
    if config.metrics_namespace and outcomes:
        ages: dict[str, float | None] = {o.name: None for o in outcomes}
        for image in natives:  # the previous backups: a failed server's age is the newest's
            if image.state == AVAILABLE and image.server in ages:
                age = (finished - image.created).total_seconds() / 3600
                known = ages[image.server]
                ages[image.server] = age if known is None else min(age, known)
        for out in outcomes:
            if not out.error:  # the new backup, taken at the run's start
                ages[out.name] = (finished - started.replace(microsecond=0)).total_seconds() / 3600
        run_dims = {"Schedule": config.schedule, "Pool": config.pool}
        data = age_metrics(config, ages, finished)
        data += [
            metric("ServersBackedUp", counts["servers_backed_up"], "Count", run_dims, finished),
            metric("ServersFailed", counts["servers_failed"], "Count", run_dims, finished),
            metric("ImagesPruned", counts["images_pruned"], "Count", run_dims, finished),
            metric("RunSeconds", seconds, "Seconds", run_dims, finished),
        ]
        put_metrics(clients, config, data)


def write_state(path: str, record: dict) -> None:
    """Replace STATE_FILE atomically; a failure is a warning."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=os.path.dirname(path) or ".",
            delete=False,
            prefix=".state-",
        ) as handle:
            json.dump(record, handle, indent=2)
        os.replace(handle.name, path)
    except OSError as err:
        log.warning("cannot write STATE_FILE %s: %s; --check will not see this run", path, err)


def metric(name: str, value: float, unit: str, dimensions: dict[str, str], when: datetime) -> dict:
    """One PutMetricData datum."""
    dims = [{"Name": k, "Value": v} for k, v in dimensions.items()]
    return {"MetricName": name, "Dimensions": dims, "Value": value, "Unit": unit, "Timestamp": when}


def age_metrics(config: BackupConfig, ages: dict[str, float | None], when: datetime) -> list[dict]:
    """BackupAgeHours per server that has a backup; one with none puts nothing, which the
    alarm's TreatMissingData=breaching counts as a breach."""
    return [
        metric(
            "BackupAgeHours",
            age,
            "None",
            {"Server": server, "Schedule": config.schedule, "Pool": config.pool},
            when,
        )
        for server, age in sorted(ages.items())
        if age is not None
    ]


def put_metrics(clients: Clients, config: BackupConfig, data: list[dict]) -> None:
    """PutMetricData, METRICS_PER_CALL at a time; a failure is a warning."""
    cloudwatch = clients.client("cloudwatch")
    for start in range(0, len(data), METRICS_PER_CALL):
        try:
            cloudwatch.put_metric_data(
                Namespace=config.metrics_namespace,
                MetricData=data[start : start + METRICS_PER_CALL],
            )
        except (ClientError, BotoCoreError) as err:
            log.warning(
                "could not put metrics in %s: %s", config.metrics_namespace, error_text(err)
            )
            return


METRICS_PER_CALL = 1000  # PutMetricData takes at most 1000 metrics a request


# --- IAM policy: the least privilege this config needs --------------------------------------


def print_iam_policy(config: BackupConfig) -> int:
    """--print-iam-policy: the policy this config's runs need, as JSON; no AWS call."""
    print(json.dumps(iam_policy(config), indent=2))
    return EXIT_OK


def iam_policy(config: BackupConfig) -> dict:
    """The least-privilege policy for this config: its regions and account, and only the
    features it uses. Every destructive call is limited to images carrying the marker."""
    home, account = policy_scope(config)
    regions = [home, *config.copy_to_regions]
    images = [f"arn:aws:ec2:{r}::image/*" for r in regions]
    snapshots = [f"arn:aws:ec2:{r}::snapshot/*" for r in regions]
    marked = {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}
    describe = ["ec2:DescribeInstances", "ec2:DescribeAddresses", "ec2:DescribeImages",
                "ec2:DescribeSnapshots", "ec2:ListImagesInRecycleBin"]  # fmt: skip
    statements = [
        statement("Describe", describe, "*"),
        *instance_statements(config, home, account, "ec2:CreateImage", "aws:ResourceTag"),
        *instance_statements(config, home, account, "ec2:GetLaunchTemplateData",
                             "aws:ResourceTag", sid="ReadTheConfigsInstancesLaunchData"),
        *instance_statements(config, home, account, "ec2:DescribeInstanceAttribute",
                             "aws:ResourceTag", sid="InstanceAttributesForGetLaunchTemplateData"),
        statement("DescribesGetLaunchTemplateDataMakes", LAUNCH_DATA_DESCRIBES, "*"),
        statement("CreateOnlyMarkedImagesAndSnapshots", "ec2:CreateImage",
                  images[:1] + snapshots[:1],
                  {"StringEquals": {f"aws:RequestTag/{TAG_MANAGED}": TOOL}}),
        statement("TagAtCreationOnly", "ec2:CreateTags", images[:1] + snapshots[:1],
                  {"StringEquals": {"ec2:CreateAction": "CreateImage"}}),
        statement("DeleteOnlyMarkedImagesAndSnapshots",
                  ["ec2:DeregisterImage", "ec2:DeleteSnapshot"], images + snapshots, marked),
        statement("ReleaseProtectionOnlyOfMarkedImages",
                  "ec2:DisableImageDeregistrationProtection", images, marked),
        statement("CountBlocksOnlyOfMarkedSnapshots", DIRECT_ACTIONS, snapshots, marked),
    ]  # fmt: skip
    if config.record_load_balancers:
        statements.append(statement(
            "ReadLoadBalancerMembership",
            ["elasticloadbalancing:DescribeTargetGroups",
             "elasticloadbalancing:DescribeTargetHealth",
             "elasticloadbalancing:DescribeLoadBalancers"], "*",
        ))  # fmt: skip
    if config.deregistration_protection:
        protect = "ec2:EnableImageDeregistrationProtection"
        statements.append(statement("ProtectOnlyMarkedImages", protect, images, marked))
    statements += ssm_statements(config, home, account)
    statements += dr_statements(config, images, snapshots, marked)
    if config.metrics_namespace:
        statements.append(statement(
            "PutMetricsOnlyInTheConfigsNamespace", "cloudwatch:PutMetricData", "*",
            {"StringEquals": {"cloudwatch:namespace": config.metrics_namespace}},
        ))  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def policy_scope(config: BackupConfig) -> tuple[str, str]:
    """The region and account for the policy's ARNs, without an AWS call: REGION (or the
    profile's), and ROLE_ARN's account, else "*"."""
    region = base_session(config.profile, config.region)[0].region_name
    return region, config.role_arn.split(":")[4] if config.role_arn else "*"


def statement(sid: str, action: Any, resource: Any, condition: dict | None = None) -> dict:
    """One Allow statement."""
    made = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        made["Condition"] = condition
    return made


def instance_statements(
    config: BackupConfig, region: str, account: str, action: str, tag_key: str,
    servers: Sequence[ServerSpec] | None = None, sid: str = "ImageOnlyTheConfigsInstances",
) -> list[dict]:  # fmt: skip
    """action on the config's instances: SERVERS by id, SELECT_TAGS by their tags."""
    listed = config.servers if servers is None else servers
    arn = f"arn:aws:ec2:{region}:{account}:instance/"
    made = []
    if listed:
        made.append(statement(sid, action, [arn + s.instance_id for s in listed]))
    if config.select_tags and servers is None:
        tags = {f"{tag_key}/{k}": v for k, v in config.select_tags.items()}
        made.append(statement(sid + "ByTag", action, arn + "*", {"StringEquals": tags}))
    return made


def ssm_statements(config: BackupConfig, region: str, account: str) -> list[dict]:
    """Run Command, only if a server uses vss or scripts: the documents those modes run,
    on those servers by id, or (found by SELECT_TAGS) on instances that opt in by tag."""
    by_tags = config.select_tags and config.defaults.consistency in SSM_MODES
    servers = [s for s in config.servers if s.consistency in SSM_MODES]
    if not servers and not by_tags:
        return []
    modes = {s.consistency for s in servers} | ({config.defaults.consistency} if by_tags else set())
    documents = [DOC_VSS] if "vss" in modes else []
    if "scripts" in modes:
        documents = [DOC_SHELL, DOC_POWERSHELL, *documents]
    made = [
        statement("FindSsmManagedInstances", ["ssm:DescribeInstanceInformation",
                  "ssm:GetCommandInvocation", "ssm:ListCommands"], "*"),
        statement("RunOnlyTheConsistencyDocuments", "ssm:SendCommand",
                  [f"arn:aws:ssm:{region}:*:document/{d}" for d in documents]),
    ]  # fmt: skip
    made += instance_statements(config, region, account, "ssm:SendCommand", "ssm:resourceTag",
                                servers, "OnlyOnTheConsistencyServers")  # fmt: skip
    if by_tags:
        made.append(statement(
            "OnlyOnInstancesThatOptIn", "ssm:SendCommand",
            f"arn:aws:ec2:{region}:{account}:instance/*",
            {"StringEquals": {f"ssm:resourceTag/{SSM_OPT_IN_TAG}": "allow"}},
        ))  # fmt: skip
    return made


def dr_statements(
    config: BackupConfig, images: list[str], snapshots: list[str], marked: dict
) -> list[dict]:
    """Copies, sharing and deprecation, only as far as the config uses them."""
    made = []
    if config.copy_to_regions:
        made += [
            statement("CopyIntoTheConfigsRegions", "ec2:CopyImage", images[1:]),
            statement("CopyOnlyMarkedBackups", "ec2:CopyImage", images[:1] + snapshots[:1],
                      marked),
            statement("TagCopiesAtCreationOnly", "ec2:CreateTags", images[1:] + snapshots[1:],
                      {"StringEquals": {"ec2:CreateAction": "CopyImage"}}),
        ]  # fmt: skip
    if config.share_with_accounts:
        accounts = sorted(config.share_with_accounts)
        made += [  # IAM has no condition key for whom an image's launch permission names
            statement("ShareOnlyMarkedImages", "ec2:ModifyImageAttribute", images, marked),
            statement("ShareSnapshotsOnlyWithTheConfigsAccounts", "ec2:ModifySnapshotAttribute",
                      snapshots,
                      {**marked, "ForAllValues:StringEquals": {"ec2:Add/userId": accounts}}),
            statement("RecordWhomAnImageIsSharedWith", "ec2:CreateTags", images, {
                **marked, "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_SHARED_WITH]}}),
            statement("FindWhichKeyEncryptsAnImageBeforeSharingIt", "kms:DescribeKey", "*"),
        ]  # fmt: skip
    if any(s.consistency == "vss" for s in config.servers) or (
        config.select_tags and config.defaults.consistency == "vss"
    ):
        made.append(statement("TagWhatVssMade", "ec2:CreateTags", images[:1] + snapshots[:1],
                              marked))  # fmt: skip
    if config.deprecate_after_days:
        made.append(statement("DeprecateOnlyMarkedImages", "ec2:EnableImageDeprecation",
                              images, marked))  # fmt: skip
    keys = [t.kms_key_id for t in config.copy_to_regions.values() if t.kms_key_id]
    if keys:  # an alias names no key ARN before a call: then any key, but through EC2 only
        arns = keys if all(k.startswith("arn:") for k in keys) else "*"
        made.append(statement(
            "EncryptCopiesThroughEc2Only",
            ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey",
             "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"],
            arns, {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}},
        ))  # fmt: skip
    return made


# --- Scheduling: one managed crontab entry per config -------------------------------------


class CronError(Exception):
    """The crontab could not be read or written."""


def check_cron_schedule(schedule: str) -> None:
    """Five cron fields, or one of cron's @-names."""
    fields = schedule.split()
    if schedule.strip() in CRON_SPECIAL:
        return
    if len(fields) != 5 or not all(CRON_FIELD_RE.match(f) for f in fields):
        raise ConfigError(f"--install-cron {schedule!r}: give five cron fields, e.g. '0 2 * * *'")


def cron_marker(config_path: str) -> str:
    """The comment that ends this config's crontab entry."""
    return CRON_MARKER + os.path.abspath(config_path)


def cron_entry(schedule: str, config_path: str, log_path: str) -> str:
    """The crontab line: flock, absolute paths, -q, output appended to a log, the marker."""
    config = os.path.abspath(config_path)
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    lock = os.path.join(tempfile.gettempdir(), f"ec2_to_ami-{digest}.cron.lock")
    words = ["flock", "-n", lock, sys.executable, os.path.abspath(__file__), "--config", config]
    command = " ".join(shlex.quote(w) for w in words) + " -q"
    command += f" >> {shlex.quote(os.path.abspath(log_path))} 2>&1"
    return f"{' '.join(schedule.split())} {command} {cron_marker(config)}".replace("%", "\\%")


def read_crontab() -> bytes:
    """The current user's crontab, byte for byte (empty if there is none)."""
    try:
        result = subprocess.run(["crontab", "-l"], capture_output=True, check=False)
    except FileNotFoundError:
        raise CronError(
            "the crontab command is not installed (Debian: apt-get install cron)"
        ) from None
    if result.returncode and b"no crontab" not in result.stderr:
        raise CronError(f"crontab -l failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout if result.returncode == 0 else b""


def write_crontab(content: bytes) -> None:
    """Replace the current user's crontab."""
    result = subprocess.run(["crontab", "-"], input=content, capture_output=True, check=False)
    if result.returncode:
        raise CronError(f"crontab - failed: {result.stderr.decode(errors='replace').strip()}")


def split_crontab(content: bytes, config_path: str) -> tuple[list[bytes], list[bytes]]:
    """The crontab's lines: (this config's entries, all other lines), each with its newline."""
    marker = cron_marker(config_path).replace("%", "\\%").encode()
    ours, others = [], []
    for line in content.splitlines(keepends=True):
        (ours if line.rstrip(b"\r\n").endswith(marker) else others).append(line)
    return ours, others


def manage_cron(args: argparse.Namespace) -> int:
    """Install, show or uninstall this config's crontab entry; nothing else is touched."""
    ours, others = split_crontab(read_crontab(), args.config)
    if args.show_cron:
        for line in ours:
            print(line.decode().rstrip("\n"))
        if not ours:
            log.error("no crontab entry for %s", os.path.abspath(args.config))
        return EXIT_OK if ours else EXIT_FAILED
    kept = b"".join(others)
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    if args.install_cron:
        log_path = args.cron_log or default_cron_log(args.config)
        kept += (cron_entry(args.install_cron, args.config, log_path) + "\n").encode()
    write_crontab(kept)
    verb = "installed" if args.install_cron else "removed" if ours else "nothing to remove for"
    log.info("crontab entry %s: %s", verb, os.path.abspath(args.config))
    return EXIT_OK


def default_cron_log(config_path: str) -> str:
    """~/ec2_to_ami.<config name>.log"""
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join(os.path.expanduser("~"), f"ec2_to_ami.{stem}.log")


# --- Command line ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; argparse exits 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="ec2_to_ami.py", description="Back up EC2 instances as AMIs and prune old ones."
    )
    parser.add_argument("--config", default=default_config_path(), help="config file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
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
    parser.add_argument("--json", action="store_true", help="--check's or --cost's report as JSON")
    parser.add_argument(
        "--print-iam-policy",
        action="store_true",
        help="print the least-privilege IAM policy this config needs (no AWS call)",
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
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    noise.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    args.cron = bool(args.install_cron or args.uninstall_cron or args.show_cron)
    if args.list and (args.dry_run or args.no_prune):
        parser.error("--list does not go with --dry-run or --no-prune")
    if args.recycle_bin and not args.list:
        parser.error("--recycle-bin goes with --list")
    if args.print_iam_policy and (
        args.list or args.check or args.cost or args.dry_run or args.no_prune
    ):
        parser.error("--print-iam-policy goes only with --config")
    if args.check and (args.list or args.dry_run or args.no_prune):
        parser.error("--check does not go with --list, --dry-run or --no-prune")
    if args.cost and (args.list or args.check or args.dry_run or args.no_prune):
        parser.error("--cost does not go with --list, --check, --dry-run or --no-prune")
    if args.json and not (args.check or args.cost):
        parser.error("--json goes with --check or --cost")
    if args.also_config and not args.check:
        parser.error("--also-config goes with --check")
    if args.cron and (
        args.list or args.check or args.cost or args.dry_run or args.no_prune or args.server
    ):
        parser.error("the cron options go only with --config and --cron-log")
    if args.cron_log and not args.install_cron:
        parser.error("--cron-log goes with --install-cron")
    return args


def default_config_path() -> str:
    """ec2_to_ami_config.py beside this script."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ec2_to_ami_config.py")


def setup_logging(args: argparse.Namespace, log_file: str | None = None) -> None:
    """Log to stderr (and LOG_FILE); keep botocore quiet unless -vv."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("botocore").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)


class LockError(Exception):
    """The run lock could not be opened; nothing was done."""


@contextmanager
def run_lock(config_path: str) -> Iterator[bool]:
    """Hold an exclusive lock per config file, whoever runs it; yield False if another run does.

    The lock file is named for the config's real path, so one config reached through a
    link is one lock. It is opened read-only (flock needs no more) and created
    world-writable, so a run as another user than the first can take it too.
    """
    real = os.path.realpath(config_path)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"ec2_to_ami-{digest}.lock")
    fd = open_lock_file(path)
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


if __name__ == "__main__":
    sys.exit(main())
