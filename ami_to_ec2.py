#!/usr/bin/env python3
"""Launch a working replacement EC2 instance from a backup made by ec2_to_ami.py.

    python ami_to_ec2.py --server web01 --dry-run
    python ami_to_ec2.py --server web01
    python ami_to_ec2.py --all                 # a fleet: every server with a backup here
    python ami_to_ec2.py --drill --all         # prove the backups restore, then clean up

The backup recorded the original's launch configuration on the image, so the
server's name is enough, even when the original instance is gone. The new
instance is a twin: each attribute is reproduced, read back after launch and
compared, and anything that could not be reproduced is a warning. A fleet is
planned server by server, checked with one describe per kind for all, launched
at EC2's RunInstances pace and polled together. A drill restores into an
isolated subnet, checks, terminates, and records the result on the image.

Exit codes: 0 every server launched and reached WAIT (a drill: passed), 1 an
AWS-side failure or a failed server (the report still names every instance
launched), 2 usage or config error (no AWS call).

Read it in this order; each section is marked "# --- <name>":
  The tag contract, EC2 facts   what the backup wrote, and the names of things
  The story                     main(), then restore(): config, look, plan, act, report
  Config                        load and check the config and flags, before any AWS call
  What the backup recorded      the launch configuration (the launch record) read from the tags
  User data                     host name and the operator's user data, merged
  Plan the launch (pure)        every attribute (recorded, overridden or default), and
                                RunInstances' parameters for each instance; a server's
                                restore in a run (Restore)
  AWS access                    one session and its clients, retries
  Look                          find each server's backup (or bring one back from the
                                Recycle Bin); check what EC2 would refuse, and what is
                                gone, with one describe per kind for the fleet (Facts)
  Do it                         launch at RunInstances' pace; poll the fleet; source/dest
                                check, Elastic IPs, load balancers, DNS as each runs
  Check the twin, Report        read the instances back, compare; the tables or JSON
  Drill                         --drill: isolate, check through SSM, always clean up,
                                record the result on the image and in DRILL_LOG
  IAM policy                    --print-iam-policy: the least privilege this config needs
  Command line
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import getpass
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

log = logging.getLogger("ami_to_ec2")

TOOL = "ec2-to-ami"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# --- The tag contract (written by ec2_to_ami.py; tests/test_contract.py keeps them equal) ---
TAG_PREFIX = "ec2-to-ami:"
TAG_MANAGED = "ec2-to-ami:managed-by"
TAG_SERVER = "ec2-to-ami:server"
TAG_SCHEDULE = "ec2-to-ami:schedule"
TAG_INSTANCE_ID = "ec2-to-ami:instance-id"
TAG_CREATED = "ec2-to-ami:created"
TAG_POOL = "ec2-to-ami:pool"  # the backup config's retention pool
TAG_RUN = "ec2-to-ami:run"  # the backup run that made the image
TAG_INSTANCE_TYPE = "ec2-to-ami:instance-type"
TAG_SUBNET = "ec2-to-ami:subnet-id"
TAG_SECURITY_GROUPS = "ec2-to-ami:security-group-ids"
TAG_KEY_NAME = "ec2-to-ami:key-name"
TAG_INSTANCE_PROFILE = "ec2-to-ami:iam-instance-profile"
TAG_PRIVATE_IP = "ec2-to-ami:private-ip"
TAG_ELASTIC_IP = "ec2-to-ami:eip-allocation-id"
TAG_PLATFORM = "ec2-to-ami:platform"
TAG_HTTP_TOKENS = "ec2-to-ami:http-tokens"
TAG_INSTANCE_TAG_KEYS = "ec2-to-ami:instance-tag-keys"
TAG_SOURCE_REGION = "ec2-to-ami:source-region"  # on a copy in another region
TAG_SOURCE_IMAGE = "ec2-to-ami:source-image-id"
TAG_SHARED_WITH = "ec2-to-ami:shared-with"
TAG_SELECT_TAG_KEYS = "ec2-to-ami:select-tag-keys"  # the backup config's SELECT_TAGS keys
TAG_DRILL = "ec2-to-ami:drill"  # on a drill instance: the server it tests
TAG_DRILL_RUN = "ec2-to-ami:drill-run"  # on a drill instance: the drill run that launched it
TAG_VERIFIED = "ec2-to-ami:verified"  # on an image a drill restored: when, ok|failed, seconds
# The launch record: JSON over LAUNCH_DEFAULTS (a key left out has its default value).
TAG_LAUNCH = "ec2-to-ami:launch"
LAUNCH_VERSION = 1
LAUNCH_DEFAULTS: dict[str, Any] = {
    "tenancy": "default",
    "placement_group": None,
    "partition": None,
    "host_id": None,
    "host_resource_group": None,
    "affinity": None,
    "cpu_options": None,
    "credits": None,
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
    "interfaces": [],
    "elastic_ips": [],
    "target_groups": [],
    "classic_load_balancers": [],
    "unknown": [],
}
INTERFACE_DEFAULTS = {"secondary": [], "ipv6": 0, "source_dest_check": True, "description": "",
                      "delete_on_termination": True, "public_ip": False}  # fmt: skip
# Tags the restore puts on the new instance.
TAG_RESTORED_FROM = "ec2-to-ami:restored-from"  # source image id
TAG_RESTORED_BACKUP_TIME = "ec2-to-ami:restored-backup-time"  # the backup's created time

MAX_TAGS = 50

# --- EC2 facts -------------------------------------------------------------------------
AVAILABLE, RUNNING, PENDING = "available", "running", "pending"
DISABLED = "disabled"  # DisableImage; EnableImage makes the image available again
IN_RECYCLE_BIN = "in the Recycle Bin"  # deregistered, kept by a retention rule
GONE_STATES = {"terminated", "shutting-down"}
STATUS_OK = "ok"
ERR_DRY_RUN_OK = "DryRunOperation"
NOT_FOUND_CODES = {
    "InvalidSubnetID.NotFound": "subnet",
    "InvalidGroup.NotFound": "security group",
    "InvalidGroupId.Malformed": "security group",
    "InvalidKeyPair.NotFound": "key pair",
    "InvalidInstanceType": "instance type",
    "InvalidAllocationID.NotFound": "Elastic IP allocation",
    "InvalidAMIID.NotFound": "image",
    "InvalidAMIID.Malformed": "image",
}
ERR_NO_SUCH_ENTITY = "NoSuchEntity"  # IAM: the instance profile is gone
ERR_TARGET_GROUP_NOT_FOUND = "TargetGroupNotFound"
ERR_LOAD_BALANCER_NOT_FOUND = "LoadBalancerNotFound"  # Classic ELB
PLACEMENT_GONE_CODES = {"InvalidPlacementGroup.Unknown", "InvalidPlacementGroupName.NotFound"}
HOST_USABLE_STATES = {"available"}
HOST_GONE_CODES = {"InvalidHostID.NotFound", "InvalidHostId.NotFound", "InvalidHostID.Malformed"}
# GetLaunchTemplateData's answer -> attribute name: read back in one call.
LAUNCH_DATA_KEYS = {
    "DisableApiTermination": "termination protection",
    "DisableApiStop": "stop protection",
    "InstanceInitiatedShutdownBehavior": "shutdown behaviour",
}
# GetLaunchTemplateData calls these on the caller's behalf (EC2 API reference).
LAUNCH_DATA_DESCRIBES = ["ec2:DescribeInstanceCreditSpecifications", "ec2:DescribeVolumes",
                         "ec2:DescribeSpotInstanceRequests"]  # fmt: skip
BURSTABLE_RE = re.compile(r"^t\d")  # T instance types: CPU credits
STATUS_IDS_MAX = 100  # DescribeInstanceStatus: instance ids per call
FILTER_VALUES_MAX = 200
INSTANCE_TYPES_MAX = 100  # DescribeInstanceTypes: names per call
DESCRIBED = {"subnets": "Subnets", "security_groups": "SecurityGroups", "key_pairs": "KeyPairs",
             "network_interfaces": "NetworkInterfaces", "addresses": "Addresses"}  # fmt: skip
DNS_TTL_DEFAULT = 300  # for a DNS_RECORDS record that does not exist yet
UNAVAILABLE = "not reproducible"  # an attribute a warning said cannot be reproduced
MONITORING_ON = ("enabled", "pending")
AMI_ID_RE = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
SUBNET_ID_RE = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
GROUP_ID_RE = re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")
ALLOCATION_ID_RE = re.compile(r"^eipalloc-([0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
SESSION_NAME_BAD_CHARS = re.compile(r"[^\w+=,.@-]")
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
WINDOWS_NAME_MAX = 15
VOLUME_TYPES = {"gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"}
# RunInstances' provisioned rate for volume initialization, MiB/s (EbsBlockDevice).
INITIALIZATION_RATES = (100, 300)
DRILL_PICKS = ("newest", "random")
# DRILL_CHECK runs through SSM Run Command with the platform's AWS document.
CHECK_DOCUMENTS = {"linux": "AWS-RunShellScript", "windows": "AWS-RunPowerShellScript"}
SSM_ONLINE, SSM_SUCCESS = "Online", "Success"
SSM_RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}
SSM_IDS_MAX = 50  # instance ids per SendCommand and DescribeInstanceInformation filter
SSM_NEEDS = "SSM Agent running and an instance profile with AmazonSSMManagedInstanceCore"
WAIT_MODES = ("none", "running", "status-ok")
POLL_FIRST_SECONDS, POLL_MAX_SECONDS, POLL_FACTOR = 1.0, 15.0, 1.5
# The calls a restore makes at a bucket's pace: (bucket, size, refill a second), from EC2's
# request throttling table. RunInstances' small bucket sets a fleet restore's pace.
PACED_CALLS = {
    "RunInstances": ("run", 5, 2.0),
    "AssociateAddress": ("mutating", 50, 5.0),
    "ModifyNetworkInterfaceAttribute": ("mutating", 50, 5.0),
    "EnableImage": ("mutating", 50, 5.0),
    "TerminateInstances": ("mutating", 50, 5.0),
    "CreateTags": ("tags", 100, 10.0),
    "GetLaunchTemplateData": ("describe", 100, 20.0),  # one per server, for its twin check
}
# Tokens the pacer leaves in EC2's bucket, so jitter in when calls arrive is not refused.
PACER_SLACK = 2
RESTORABLE_ROLE_PATH = "/ec2-to-ami-restorable/"  # the roles the restore policy lets it pass
# "allow" on an Elastic IP, target group or Classic Load Balancer: a restore may use it
RESTORE_OPT_IN_TAG = "ec2-to-ami-restore"
BIN_RESTORE_SECONDS = 120  # for an image restored from the Recycle Bin to show as available
DEFAULT_MAX_ATTEMPTS = 10

# --- The story: main, then the restore ---------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Load and check the config, then list, dry-run, restore or drill."""
    args = parse_args(argv)
    setup_logging(args)
    try:
        settings = apply_flags(load_config(args.config), args)
        config = validate_config(settings, listing=args.list or args.print_iam_policy)
        if args.print_iam_policy:
            return print_iam_policy(config)
        clients = make_clients(config)
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_USAGE
    except RoleError as err:
        log.error("%s", err)
        return EXIT_FAILED
    try:
        if args.list:
            return list_backups(clients.ec2, config, args.recycle_bin)
        if config["DRILL"]:
            return drill(clients, config, args)
        return restore(clients, config, args)
    except RestoreError as err:
        log.error("%s; nothing launched", err)
        return EXIT_FAILED
    except (ClientError, BotoCoreError) as err:
        log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
        return EXIT_FAILED


def restore(clients: Clients, config: dict, args: argparse.Namespace) -> int:
    """Find each server's backup, plan and check its launch, launch at EC2's pace, finish
    and check each twin as it comes up, and report. Exit 1 if any server failed."""
    run = Run(config["FLEET"])
    try:
        restores = prepare(clients, config, args, run)
    except (ClientError, BotoCoreError) as err:
        raise RestoreError(f"AWS error: {error_text(err)}") from None
    if restores is None or args.dry_run:
        return EXIT_OK if restores is None else dry_run(clients.ec2, restores, config)
    run_restores(clients, config, restores, run)
    report(clients.ec2, restores, config, args.json, run)
    return EXIT_FAILED if any(r.error for r in restores) else EXIT_OK


def prepare(
    clients: Clients, config: dict, args: argparse.Namespace, run: Run
) -> list[Restore] | None:
    """Find each server's backup (an AMI_ID from the Recycle Bin if need be), plan its
    launch and check it; None when a dry run can plan no further. Launches nothing.

    The describes are made once for all servers. In a fleet a server that cannot be
    restored is marked failed and the others go on; a single restore stops instead.
    """
    ec2, fleet = clients.ec2, config["FLEET"]
    if config["AMI_ID"]:
        image = find_image(ec2, config)
        if config["DRILL"] and image["State"] != AVAILABLE:
            raise RestoreError(
                f"image {image['ImageId']} is {image['State']}: a drill tests available "
                "images only, and changes nothing to reach one"
            )
        if image["State"] == IN_RECYCLE_BIN:
            if args.dry_run:
                print(
                    f"Would restore {image['ImageId']} ({image.get('Name', '')}) from the "
                    f"Recycle Bin, where it stays until {bin_time(image.get('RecycleBinExitTime'))}"
                    ", with its snapshots, then launch from it. Its recorded configuration is on "
                    "its tags, which EC2 shows only once it is restored: nothing more can be "
                    "planned before."
                )
                return None
            image = restore_from_recycle_bin(ec2, image)
        restores = [Restore(read_recorded(image).server or image["ImageId"], image)]
    else:
        restores = pick_images(ec2, config)
    token = run.token = run.token or args.client_token or f"{TOOL}-{uuid.uuid4().hex}"
    alive = live_originals(ec2, [read_recorded(r.image) for r in restores if r.image])
    for r in restores:
        if r.image:
            with one_server(r, fleet):
                recorded = read_recorded(r.image)
                r.plan = plan_launch(
                    config, r.image, recorded, recorded.instance_id in alive,
                    server_token(token, r.server) if fleet else token, ec2.meta.region_name,
                )  # fmt: skip
    facts = gather_facts(clients, [r.plan for r in restores if r.plan])
    for r in restores:
        if r.plan:
            with one_server(r, fleet):
                check_before_launch(clients, r.plan, facts)
            for warning in r.plan.warnings:
                log.warning("%s%s", f"{r.server}: " if fleet else "", warning)
        r.at["image_resolved"] = run.since()
    return restores


@contextlib.contextmanager
def one_server(restore: Restore, fleet: bool) -> Iterator[None]:
    """In a fleet, a server's failure is its own: record it (the report names it) and go
    on. A single restore raises it, as before any launch."""
    try:
        yield
    except (RestoreError, ClientError, BotoCoreError) as err:
        if not fleet:
            raise
        text = str(err) if isinstance(err, RestoreError) else f"AWS error: {error_text(err)}"
        restore.problems.append(text)


def server_token(token: str, server: str) -> str:
    """A server's own client token in a fleet, from the run's: the same run token and
    server give the same token, so a rerun with --client-token launches nothing twice."""
    digest = hashlib.sha256(f"{token}/{server}".encode()).hexdigest()
    return f"{TOOL}-{digest[:40]}"


# --- Config -------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "REGION": None,
    "PROFILE": None,
    "SERVER": None,
    "SERVERS": None,
    "AMI_ID": None,
    "SCHEDULE": None,
    "POOL": None,
    "BACKUP_BEFORE": None,
    "COUNT": 1,
    "INSTANCE_TYPE": None,
    "SUBNET_ID": None,
    "SECURITY_GROUP_IDS": None,
    "KEY_NAME": None,
    "IAM_INSTANCE_PROFILE": None,
    "ALLOWED_INSTANCE_PROFILES": None,
    "PRIVATE_IP": None,
    "ELASTIC_IP": "same",
    "ALLOW_REASSOCIATION": False,
    "HOSTNAME": None,
    "USER_DATA": None,
    "NAME": None,
    "TAGS": {},
    "TERMINATION_PROTECTION": None,
    "STOP_PROTECTION": None,
    "SHUTDOWN_BEHAVIOR": None,
    "MONITORING": None,
    "EBS_OPTIMIZED": None,
    "AUTO_RECOVERY": None,
    "IMDSV2": None,
    "METADATA_OPTIONS": None,
    "PRIVATE_DNS_NAME_OPTIONS": None,
    "TENANCY": None,
    "PLACEMENT_GROUP": None,
    "HOST_ID": None,
    "CPU_OPTIONS": None,
    "CREDIT_SPECIFICATION": None,
    "NETWORK_INTERFACES": None,
    "PUBLIC_IP": None,
    "TARGET_GROUPS": "same",
    "CLASSIC_LOAD_BALANCERS": "same",
    "DNS_RECORDS": [],
    "VOLUME_TYPE": None,
    "ENCRYPTED": None,
    "KMS_KEY_ID": None,
    "DELETE_ON_TERMINATION": None,
    "VOLUME_INITIALIZATION_RATE": None,
    "WAIT": "status-ok",
    "WAIT_TIMEOUT_MINUTES": 30,
    "REGION_MAP": {},
    "ROLE_ARN": None,
    "DRILL_SUBNET_ID": None,
    "DRILL_SECURITY_GROUP_IDS": None,
    "DRILL_INSTANCE_TYPE": None,
    "DRILL_CHECK": None,
    "DRILL_TIMEOUT_MINUTES": 15,
    "DRILL_PICK": "newest",
    "DRILL_LOG": None,
}


class ConfigError(Exception):
    """A config or usage problem; the message names the setting."""


class RestoreError(Exception):
    """A problem found before launching; nothing was launched."""


def load_config(path: str) -> dict[str, Any]:
    """Read a config file's UPPER_CASE settings (not yet validated)."""
    settings = read_settings(path)
    for name in settings:
        if name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")
    return {**DEFAULTS, **settings}


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


def apply_flags(config: dict, args: argparse.Namespace) -> dict:
    """Command-line flags override the file."""
    config = dict(config)
    if args.server:  # one --server is a single restore; several are a fleet
        several = len(args.server) > 1
        config["SERVER"] = None if several else args.server[0]
        config["SERVERS"], config["AMI_ID"] = list(args.server) if several else None, None
    if args.all:
        config["SERVER"], config["SERVERS"], config["AMI_ID"] = None, None, None
    if args.ami is not None:
        config["AMI_ID"], config["SERVER"], config["SERVERS"] = args.ami, None, None
    config["ALL"], config["DRILL"] = args.all, args.drill
    if args.before is not None:
        config["BACKUP_BEFORE"] = args.before
    if args.pool is not None:
        config["POOL"] = args.pool
    if args.count is not None:
        config["COUNT"] = args.count
    if args.region is not None:
        config["REGION"] = args.region
    if args.subnet_id is not None:
        config["SUBNET_ID"] = args.subnet_id
    if args.security_group_ids is not None:
        config["SECURITY_GROUP_IDS"] = [g for g in args.security_group_ids.split(",") if g]
    return config


def validate_config(config: dict, listing: bool = False) -> dict:
    """Check every setting; return the config with parsed values."""
    _check_choice(config, "SERVER", str)
    _check_pattern(config, "AMI_ID", AMI_ID_RE, "an image id such as ami-0123456789abcdef0")
    check_servers(config["SERVERS"])
    config.setdefault("ALL", False)
    config.setdefault("DRILL", False)
    chosen = [bool(config["SERVER"]), bool(config["AMI_ID"]), config["SERVERS"] is not None,
              bool(config["ALL"])]  # fmt: skip
    if not listing and sum(chosen) != 1:
        raise ConfigError("set exactly one of SERVER, SERVERS and AMI_ID (or --server, --all "
                          "or --ami)")  # fmt: skip
    config["FLEET"] = config["SERVERS"] is not None or bool(config["ALL"])
    _check_pattern(config, "REGION", REGION_RE, "a region such as eu-west-1")
    _check_pattern(config, "ROLE_ARN", ROLE_ARN_RE, "an IAM role ARN")
    check_region_map(config["REGION_MAP"])
    for name in (
        "PROFILE",
        "SCHEDULE",
        "POOL",
        "INSTANCE_TYPE",
        "KEY_NAME",
        "IAM_INSTANCE_PROFILE",
    ):
        _check_choice(config, name, str)
    for name in ("NAME", "KMS_KEY_ID"):
        _check_choice(config, name, str)
    _check_pattern(config, "SUBNET_ID", SUBNET_ID_RE, "a subnet id")
    config["BACKUP_BEFORE"] = parse_before(config["BACKUP_BEFORE"])
    count = config["COUNT"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"COUNT must be a whole number >= 1, not {count!r}")
    check_group_ids(config["SECURITY_GROUP_IDS"])
    check_allowed_profiles(config["ALLOWED_INSTANCE_PROFILES"])
    check_private_ip(config["PRIVATE_IP"], count)
    check_elastic_ip(config["ELASTIC_IP"])
    check_hostname(config["HOSTNAME"])
    config["USER_DATA"] = read_user_data(config["USER_DATA"])
    check_tags(config["TAGS"])
    if not isinstance(config["ALLOW_REASSOCIATION"], bool):
        raise ConfigError(f"ALLOW_REASSOCIATION must be True or False, not "
                          f"{config['ALLOW_REASSOCIATION']!r}")  # fmt: skip
    check_twin_settings(config)
    for name in ("ENCRYPTED", "DELETE_ON_TERMINATION", "TERMINATION_PROTECTION", "STOP_PROTECTION",
                 "MONITORING", "EBS_OPTIMIZED", "PUBLIC_IP"):  # fmt: skip
        if config[name] is not None and not isinstance(config[name], bool):
            raise ConfigError(f"{name} must be None, True or False, not {config[name]!r}")
    check_volume_settings(config)
    _check_enum(config, "IMDSV2", (None, "required", "optional"))
    _check_enum(config, "WAIT", WAIT_MODES)
    for name in ("WAIT_TIMEOUT_MINUTES", "DRILL_TIMEOUT_MINUTES"):
        minutes = config[name]
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
            raise ConfigError(f"{name} must be a number > 0, not {minutes!r}")
    check_drill_settings(config)
    if config["FLEET"] and not listing:
        check_fleet_settings(config)
    return config


def check_servers(servers: Any) -> None:
    """SERVERS: None, or a list of distinct server names."""
    if servers is None:
        return
    if (not isinstance(servers, (list, tuple)) or not servers
            or not all(isinstance(s, str) and s for s in servers)):  # fmt: skip
        raise ConfigError(f"SERVERS must be None or a non-empty list of server names, not "
                          f"{servers!r}")  # fmt: skip
    twice = sorted({s for s in servers if list(servers).count(s) > 1})
    if twice:
        raise ConfigError(f"SERVERS names {', '.join(twice)} more than once")


def check_fleet_settings(config: dict) -> None:
    """Settings that belong to one server are errors when a run restores several."""
    fixed_nics = [n for n in config["NETWORK_INTERFACES"] or [] if n.get("private_ip")]
    single = [
        ("NAME", bool(config["NAME"]), "each server keeps its own Name"),
        ("PRIVATE_IP", config["PRIVATE_IP"] not in (None, "same"),
         'one address fits one server; "same" keeps each server\'s own'),
        ("ELASTIC_IP", config["ELASTIC_IP"] not in (None, "same"),
         'one Elastic IP fits one server; "same" gives each server its own'),
        ("HOSTNAME", bool(config["HOSTNAME"]), "each server keeps its own host name"),
        ("NETWORK_INTERFACES", bool(fixed_nics), "a fixed private_ip fits one server"),
        ("DNS_RECORDS", bool(config["DNS_RECORDS"]), "a record points at one server"),
    ]  # fmt: skip
    for name, set_, why in single:
        if set_:
            raise ConfigError(f"{name} is set, but this run restores several servers: {why}")
    if config["COUNT"] != 1:
        raise ConfigError("COUNT must be 1 when a run restores several servers")


def check_drill_settings(config: dict) -> None:
    """The DRILL_* settings; a drill needs its own subnet and security groups."""
    _check_pattern(config, "DRILL_SUBNET_ID", SUBNET_ID_RE, "a subnet id")
    groups = config["DRILL_SECURITY_GROUP_IDS"]
    if groups is not None:
        try:
            check_group_ids(groups)
        except ConfigError as err:
            message = str(err).replace("SECURITY_GROUP_IDS", "DRILL_SECURITY_GROUP_IDS")
            raise ConfigError(message) from None
    _check_choice(config, "DRILL_INSTANCE_TYPE", str)
    _check_choice(config, "DRILL_LOG", str)
    _check_enum(config, "DRILL_PICK", DRILL_PICKS)
    check = config["DRILL_CHECK"]
    if isinstance(check, str) and check.strip():
        config["DRILL_CHECK"] = {"linux": check, "windows": check}
    elif check is not None and not (
        isinstance(check, dict) and check and set(check) <= set(CHECK_DOCUMENTS)
        and all(isinstance(v, str) and v.strip() for v in check.values())
    ):  # fmt: skip
        raise ConfigError('DRILL_CHECK must be None, a command, or {"linux": command, '
                          f'"windows": command}}, not {check!r}')  # fmt: skip
    if config["DRILL"] and not (config["DRILL_SUBNET_ID"] and groups):
        raise ConfigError(
            "a drill needs DRILL_SUBNET_ID and DRILL_SECURITY_GROUP_IDS: an isolated subnet and "
            "security groups that keep the drill's instances away from production"
        )


def _check_choice(config: dict, name: str, kind: type) -> None:
    """A setting that is None or a non-empty value of kind."""
    value = config[name]
    if value is not None and (not isinstance(value, kind) or not value):
        raise ConfigError(f"{name} must be None or a non-empty {kind.__name__}, not {value!r}")


def _check_pattern(config: dict, name: str, pattern: re.Pattern, want: str) -> None:
    """A setting that is None or matches pattern."""
    value = config[name]
    if value is not None and (not isinstance(value, str) or not pattern.match(value)):
        raise ConfigError(f"{name} must be None or {want}, not {value!r}")


def _check_enum(config: dict, name: str, choices: tuple) -> None:
    """A setting that is one of choices."""
    if config[name] not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {shown}, not {config[name]!r}")


TENANCIES = (None, "default", "dedicated", "host")
METADATA_CHOICES = {
    "HttpTokens": ("required", "optional"),
    "HttpPutResponseHopLimit": tuple(range(1, 65)),
    "HttpEndpoint": ("enabled", "disabled"),
    "HttpProtocolIpv6": ("enabled", "disabled"),
    "InstanceMetadataTags": ("enabled", "disabled"),
}
DNS_NAME_CHOICES = {
    "HostnameType": ("ip-name", "resource-name"),
    "EnableResourceNameDnsARecord": (True, False),
    "EnableResourceNameDnsAAAARecord": (True, False),
}
INTERFACE_KEYS = {"subnet_id", "security_group_ids", "private_ip", "secondary_private_ips",
                  "ipv6_addresses", "source_dest_check", "description",
                  "delete_on_termination"}  # fmt: skip
DNS_RECORD_KEYS = {"zone_id", "name", "type", "value"}


def check_twin_settings(config: dict) -> None:
    """The settings that override a recorded attribute of the twin."""
    _check_enum(config, "TENANCY", TENANCIES)
    _check_enum(config, "SHUTDOWN_BEHAVIOR", (None, "stop", "terminate"))
    _check_enum(config, "AUTO_RECOVERY", (None, "default", "disabled"))
    _check_enum(config, "CREDIT_SPECIFICATION", (None, "standard", "unlimited"))
    for name, prefix in (("PLACEMENT_GROUP", ""), ("HOST_ID", "h-")):
        value = config[name]
        if value not in (None, False) and not (isinstance(value, str) and value.startswith(prefix)
                                               and len(value) > len(prefix)):  # fmt: skip
            raise ConfigError(f"{name} must be None (as recorded), False (none) or a "
                              f"{'host id' if prefix else 'name'}, not {value!r}")  # fmt: skip
    cpu = config["CPU_OPTIONS"]
    if cpu not in (None, False) and not (
        isinstance(cpu, dict) and set(cpu) == {"CoreCount", "ThreadsPerCore"}
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in cpu.values())
    ):  # fmt: skip
        raise ConfigError('CPU_OPTIONS must be None, False or {"CoreCount": n, '
                          f'"ThreadsPerCore": n}}, not {cpu!r}')  # fmt: skip
    check_options(config, "METADATA_OPTIONS", METADATA_CHOICES)
    check_options(config, "PRIVATE_DNS_NAME_OPTIONS", DNS_NAME_CHOICES)
    if config["IMDSV2"] and "HttpTokens" in (config["METADATA_OPTIONS"] or {}):
        raise ConfigError("set HttpTokens in METADATA_OPTIONS or IMDSV2, not both")
    check_interfaces(config["NETWORK_INTERFACES"], config["COUNT"])
    check_balancers(config)
    check_dns_records(config["DNS_RECORDS"])


def check_options(config: dict, name: str, choices: dict[str, tuple]) -> None:
    """A dict of EC2 option names to allowed values, or None."""
    value = config[name]
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be None or a dict such as {{{next(iter(choices))!r}: ...}}")
    for key, option in value.items():
        if key not in choices:
            raise ConfigError(f"{name}: unknown option {key!r}; known: {', '.join(choices)}")
        if option not in choices[key] or isinstance(option, bool) != isinstance(
            choices[key][0], bool
        ):
            raise ConfigError(f"{name}[{key!r}] cannot be {option!r}")


def check_interfaces(value: Any, count: int) -> None:
    """NETWORK_INTERFACES: None, or a list of interfaces by device index."""
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("NETWORK_INTERFACES must be None or a non-empty list of dicts")
    for index, entry in enumerate(value):
        where = f"NETWORK_INTERFACES[{index}]"
        if not isinstance(entry, dict) or not set(entry) <= INTERFACE_KEYS:
            raise ConfigError(f"{where} must be a dict with keys among {sorted(INTERFACE_KEYS)}")
        if not isinstance(entry.get("subnet_id"), str) or not SUBNET_ID_RE.match(
            entry["subnet_id"]
        ):
            raise ConfigError(f"{where} needs a subnet_id")
        if "security_group_ids" in entry:
            check_group_ids(entry["security_group_ids"])
        if entry.get("private_ip") is not None:
            check_private_ip(entry["private_ip"], count)
        for key in ("secondary_private_ips", "ipv6_addresses"):
            number = entry.get(key, 0)
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ConfigError(f"{where}[{key!r}] must be a count >= 0")
        for key in ("source_dest_check", "delete_on_termination"):
            if not isinstance(entry.get(key, True), bool):
                raise ConfigError(f"{where}[{key!r}] must be True or False")
        if not isinstance(entry.get("description", ""), str):
            raise ConfigError(f"{where}['description'] must be a string")


def check_balancers(config: dict) -> None:
    """TARGET_GROUPS and CLASSIC_LOAD_BALANCERS: "same" or a list."""
    groups = config["TARGET_GROUPS"]
    listed = isinstance(groups, (list, tuple)) and all(map(target_group_entry, groups))
    if groups != "same" and not listed:
        raise ConfigError('TARGET_GROUPS must be "same", or a list of target group ARNs or '
                          '{"arn": ..., "port": ...}')  # fmt: skip
    names = config["CLASSIC_LOAD_BALANCERS"]
    if names != "same" and not (
        isinstance(names, (list, tuple)) and all(isinstance(n, str) and n for n in names)
    ):
        raise ConfigError('CLASSIC_LOAD_BALANCERS must be "same" or a list of names')


def target_group_entry(entry: Any) -> bool:
    """A TARGET_GROUPS entry: an ARN, or {"arn": ARN, "port": n}."""
    if isinstance(entry, dict):
        port = entry.get("port")
        good_port = port is None or (isinstance(port, int) and not isinstance(port, bool))
        return set(entry) <= {"arn", "port"} and target_group_entry(entry.get("arn")) and good_port
    return isinstance(entry, str) and entry.startswith("arn:") and ":targetgroup/" in entry


def check_dns_records(records: Any) -> None:
    """DNS_RECORDS: a list of {zone_id, name, type, value: "private" | "public"}."""
    if not isinstance(records, (list, tuple)):
        raise ConfigError("DNS_RECORDS must be a list of dicts")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or set(record) != DNS_RECORD_KEYS:
            raise ConfigError(f"DNS_RECORDS[{index}] must have exactly the keys "
                              f"{', '.join(sorted(DNS_RECORD_KEYS))}")  # fmt: skip
        if record["value"] not in ("private", "public") or record["type"] != "A":
            raise ConfigError(f'DNS_RECORDS[{index}]: type must be "A" and value "private" '
                              'or "public"')  # fmt: skip
        if not all(isinstance(record[k], str) and record[k] for k in ("zone_id", "name")):
            raise ConfigError(f"DNS_RECORDS[{index}]: zone_id and name must be strings")


def parse_before(value: Any) -> datetime | None:
    """BACKUP_BEFORE as an aware datetime; a time without zone is UTC."""
    if value is None or isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"BACKUP_BEFORE must be an ISO 8601 time such as 2026-11-20T02:00Z, not {value!r}"
            ) from None
    else:
        raise ConfigError(f"BACKUP_BEFORE must be None or an ISO 8601 time, not {value!r}")
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def check_allowed_profiles(allowed: Any) -> None:
    """ALLOWED_INSTANCE_PROFILES: None, or a list of instance profile names or ARNs."""
    if allowed is None:
        return
    if not isinstance(allowed, (list, tuple)) or not all(isinstance(p, str) and p for p in allowed):
        raise ConfigError(
            "ALLOWED_INSTANCE_PROFILES must be None or a list of instance profile names or "
            f"ARNs, not {allowed!r}"
        )


def check_group_ids(groups: Any) -> None:
    """SECURITY_GROUP_IDS: None or a non-empty list of sg- ids."""
    if groups is None:
        return
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ConfigError(f"SECURITY_GROUP_IDS must be None or a list of sg- ids, not {groups!r}")
    for group in groups:
        if not isinstance(group, str) or not GROUP_ID_RE.match(group):
            raise ConfigError(f"SECURITY_GROUP_IDS: {group!r} is not a security group id")


def check_region_map(value: Any) -> None:
    """REGION_MAP: {region: {source id: this region's id}}, all strings."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"REGION_MAP must be a dict of region to {{source id: id}}, not {value!r}"
        )
    for region, mapping in value.items():
        if not isinstance(region, str) or not REGION_RE.match(region):
            raise ConfigError(f"REGION_MAP: {region!r} is not a region such as us-west-2")
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items()
        ):
            raise ConfigError(f"REGION_MAP[{region!r}] must map source ids to ids, as strings")


def check_private_ip(value: Any, count: int) -> None:
    """PRIVATE_IP: None, "same" or an IPv4 address; a fixed address allows COUNT=1 only."""
    if value is None:
        return
    if value != "same":
        try:
            ipaddress.IPv4Address(value)
        except (ValueError, TypeError):
            raise ConfigError(
                f'PRIVATE_IP must be None, "same" or an IPv4 address, not {value!r}'
            ) from None
    if count != 1:
        raise ConfigError(f"PRIVATE_IP = {value!r} needs COUNT = 1 (one address, one instance)")


def check_elastic_ip(value: Any) -> None:
    """ELASTIC_IP: None, "same" or an allocation id."""
    if value in (None, "same"):
        return
    if not isinstance(value, str) or not ALLOCATION_ID_RE.match(value):
        raise ConfigError(f'ELASTIC_IP must be None, "same" or an eipalloc- id, not {value!r}')


def check_hostname(value: Any) -> None:
    """HOSTNAME: None or a valid DNS host name."""
    if value is None:
        return
    labels = value.split(".") if isinstance(value, str) else []
    if not labels or len(value) > 253 or not all(HOST_LABEL_RE.match(x) for x in labels):
        raise ConfigError(f"HOSTNAME must be a DNS host name such as web01, not {value!r}")


def read_user_data(value: Any) -> str | None:
    """USER_DATA: text, or "@path" to read a file."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f'USER_DATA must be None, text or "@path", not {type(value).__name__}')
    if not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as handle:
            return handle.read()
    except OSError as err:
        raise ConfigError(f"USER_DATA: cannot read {value[1:]}: {err.strerror}") from None


def check_tags(tags: Any) -> None:
    """TAGS: a dict of string tag keys to string values within EC2's limits."""
    if not isinstance(tags, dict):
        raise ConfigError(f"TAGS must be a dict of tag key to value, not {tags!r}")
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or key.lower().startswith("aws:"):
            raise ConfigError(f"TAGS: {key!r} is not a usable tag key")
        if not isinstance(value, str) or len(value) > 256:
            raise ConfigError(f"TAGS[{key!r}] must be a string of at most 256 characters")


def check_volume_settings(config: dict) -> None:
    """VOLUME_TYPE, ENCRYPTED and KMS_KEY_ID must agree."""
    if config["VOLUME_TYPE"] is not None and config["VOLUME_TYPE"] not in VOLUME_TYPES:
        raise ConfigError(
            f"VOLUME_TYPE must be None or one of {', '.join(sorted(VOLUME_TYPES))}, "
            f"not {config['VOLUME_TYPE']!r}"
        )
    if config["KMS_KEY_ID"] and config["ENCRYPTED"] is False:
        raise ConfigError("KMS_KEY_ID needs ENCRYPTED = True (or None)")
    rate, (low, high) = config["VOLUME_INITIALIZATION_RATE"], INITIALIZATION_RATES
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)
                             or not low <= rate <= high):  # fmt: skip
        raise ConfigError(
            f"VOLUME_INITIALIZATION_RATE must be None or a whole number of MiB/s from {low} "
            f"to {high}, not {rate!r}"
        )


# --- What the backup recorded -----------------------------------------------------------------


def joined_value(tags: dict[str, str], key: str) -> str | None:
    """Read a tag value that may continue under key:2, key:3, ..."""
    if key not in tags:
        return None
    parts, n = [tags[key]], 2
    while f"{key}:{n}" in tags:
        parts.append(tags[f"{key}:{n}"])
        n += 1
    return "".join(parts)


@dataclass
class Recorded:
    """The original instance's configuration, as the backup recorded it on the image."""

    server: str | None = None
    schedule: str | None = None
    instance_id: str | None = None
    created: str | None = None
    instance_type: str | None = None
    subnet_id: str | None = None
    security_group_ids: list[str] = field(default_factory=list)
    key_name: str | None = None
    instance_profile: str | None = None
    private_ip: str | None = None
    elastic_ip: str | None = None
    platform: str | None = None
    http_tokens: str | None = None
    instance_tags: dict[str, str] = field(default_factory=dict)
    source_region: str | None = None  # set on a copy: the ids above belong to that region
    select_tag_keys: list[str] = field(default_factory=list)  # the backup's SELECT_TAGS keys
    # The launch record (TAG_LAUNCH) over LAUNCH_DEFAULTS; for an image made before launch
    # records, only what the tags above say. A key missing here was not recorded.
    launch: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # why the launch record is missing or partial
    completeness: str = "basic"  # "full", "partial" (some unknown) or "basic" (no record)


def read_recorded(image: dict) -> Recorded:
    """Read the tag contract off an image; an image without it gives an empty record."""
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    value = lambda key: joined_value(tags, key)  # noqa: E731 - a local shorthand
    keys = json.loads(value(TAG_INSTANCE_TAG_KEYS) or "[]")
    platform = value(TAG_PLATFORM) or ("windows" if image.get("Platform") == "windows" else None)
    recorded = Recorded(
        server=value(TAG_SERVER),
        schedule=value(TAG_SCHEDULE),
        instance_id=value(TAG_INSTANCE_ID),
        created=value(TAG_CREATED) or image.get("CreationDate"),
        instance_type=value(TAG_INSTANCE_TYPE),
        subnet_id=value(TAG_SUBNET),
        security_group_ids=[g for g in (value(TAG_SECURITY_GROUPS) or "").split(",") if g],
        key_name=value(TAG_KEY_NAME),
        instance_profile=value(TAG_INSTANCE_PROFILE),
        private_ip=value(TAG_PRIVATE_IP),
        elastic_ip=value(TAG_ELASTIC_IP),
        platform=platform or "linux",
        http_tokens=value(TAG_HTTP_TOKENS),
        instance_tags={k: tags[k] for k in keys if k in tags},
        source_region=value(TAG_SOURCE_REGION),
        select_tag_keys=json_list(value(TAG_SELECT_TAG_KEYS)),
    )
    recorded.launch, recorded.note, recorded.completeness = read_launch(value(TAG_LAUNCH), recorded)
    return recorded


def json_list(text: str | None) -> list[str]:
    """A tag holding a JSON list of strings; anything else reads as empty."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def read_launch(text: str | None, recorded: Recorded) -> tuple[dict[str, Any], str | None, str]:
    """The launch record over its defaults, less what it lists as unknown; for an image
    without one (made before launch records), the basics the older tags hold. Also why
    it is incomplete, and how complete: "full", "partial" or "basic"."""
    record = None
    if text:
        try:
            record = json.loads(text)
        except ValueError:
            record = None
    if isinstance(record, dict) and record.get("v") == LAUNCH_VERSION:
        launch = {**LAUNCH_DEFAULTS, **{k: v for k, v in record.items() if k in LAUNCH_DEFAULTS}}
        unknown = launch.pop("unknown")
        for key in unknown:
            launch.pop(key, None)
        note = f"not recorded by the backup: {', '.join(unknown)}" if unknown else None
        launch["interfaces"] = [{**INTERFACE_DEFAULTS, **n} for n in launch.get("interfaces", [])]
        for nic in launch.get("interfaces", []):
            if "secondary_count" in nic:  # recorded by count, to fit the tags
                nic["secondary"] = [None] * nic.pop("secondary_count")
        return launch, note, "partial" if unknown else "full"
    basics = basic_launch(recorded)
    if text:
        return basics, f"its {TAG_LAUNCH} tag is not a launch record this version reads", "basic"
    return basics, "the backup predates launch records: only the basics were recorded", "basic"


def basic_launch(recorded: Recorded) -> dict[str, Any]:
    """The launch configuration the tags before launch records hold: one interface, one
    Elastic IP and IMDS tokens."""
    basics: dict[str, Any] = {}
    if recorded.subnet_id:
        nic = {"index": 0, "subnet": recorded.subnet_id, "groups": recorded.security_group_ids}
        basics["interfaces"] = [{**nic, "ip": recorded.private_ip}]
    if recorded.elastic_ip:
        basics["elastic_ips"] = [
            {"index": 0, "ip": recorded.private_ip, "allocation": recorded.elastic_ip}
        ]
    if recorded.http_tokens:
        basics["http_tokens"] = recorded.http_tokens
    return basics


# --- User data --------------------------------------------------------------------------------

WINDOWS_RENAME = """$name = '{name}'
if ($env:COMPUTERNAME -ne $name) {{ Rename-Computer -NewName $name -Force -Restart }}"""


def build_user_data(platform: str, hostname: str | None, extra: str | None) -> str | None:
    """Combine HOSTNAME and USER_DATA into the user data the platform's agent runs.

    Without HOSTNAME, USER_DATA passes through unchanged. With it: on Linux a
    cloud-config part that sets the host name, followed by USER_DATA as a second
    MIME part; on Windows an EC2Launch v2 document whose executeScript tasks
    (frequency: always) run USER_DATA and then rename the computer if needed.
    """
    if not hostname:
        return extra
    if platform == "windows":
        return windows_user_data(hostname, extra)
    return linux_user_data(hostname, extra)


def linux_user_data(hostname: str, extra: str | None) -> str:
    """cloud-init user data that sets the host name, plus any extra part."""
    short = hostname.split(".")[0]
    cloud_config = f"#cloud-config\npreserve_hostname: false\nhostname: {short}\n"
    if "." in hostname:
        cloud_config += f"fqdn: {hostname}\nprefer_fqdn_over_hostname: false\n"
    if not extra:
        return cloud_config
    archive = MIMEMultipart()
    archive.attach(MIMEText(cloud_config, "cloud-config", "utf-8"))
    archive.attach(MIMEText(extra, mime_subtype(extra), "utf-8"))
    return archive.as_string()


def mime_subtype(text: str) -> str:
    """cloud-init's part type for a piece of user data, from its first line."""
    first = text.lstrip().split("\n", 1)[0]
    if first.startswith("#cloud-config"):
        return "cloud-config"
    if first.startswith("#include"):
        return "x-include-url"
    if first.startswith("## template: jinja"):
        return "jinja2"
    return "x-shellscript"


def windows_user_data(hostname: str, extra: str | None) -> str:
    """An EC2Launch v2 document that runs extra (if any) and sets the computer name."""
    name = hostname.split(".")[0]
    if len(name) > WINDOWS_NAME_MAX:
        raise RestoreError(f"HOSTNAME {name!r} is longer than Windows allows (15 characters)")
    scripts = []
    if extra:
        body = extra.strip()
        if body.startswith("version:"):
            raise RestoreError(
                "USER_DATA is an EC2Launch v2 document, which cannot be merged with HOSTNAME; "
                "add a setHostName task to it and leave HOSTNAME = None"
            )
        match = re.fullmatch(
            r"<powershell>(.*)</powershell>\s*(<persist>.*</persist>)?", body, re.S
        )
        scripts.append(match.group(1).strip() if match else body)
    scripts.append(WINDOWS_RENAME.format(name=name))
    lines = ["version: 1.1", "tasks:", "- task: executeScript", "  inputs:"]
    for script in scripts:
        lines += ["  - frequency: always", "    type: powershell", "    runAs: localSystem"]
        lines += ["    content: |-"] + [f"      {line}" for line in script.splitlines()]
    return "\n".join(lines) + "\n"


# --- Plan the launch (pure) ---------------------------------------------------------------------


@dataclass
class Attribute:
    """One reproduced attribute: what was recorded, what the launch gives it, and why."""

    name: str
    recorded: Any  # None: not recorded
    planned: Any
    origin: str  # "recorded", "overridden" (a setting) or "default" (EC2's)
    now: Any = None  # read back from the new instance after launch
    checked: bool = False


@dataclass
class Plan:
    """Everything the restore will do: RunInstances' parameters for each instance, then
    what RunInstances cannot do, and each attribute for the dry run and the check."""

    image: dict
    recorded: Recorded
    params: dict[str, Any]  # the first instance's RunInstances parameters
    elastic_ip: str | None  # the Elastic IP on the primary address (for the report)
    name: str
    warnings: list[str] = field(default_factory=list)
    eip_holder: str | None = None  # who held the Elastic IP when checked before launch
    attributes: list[Attribute] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)  # COUNT > 1: the rest
    elastic_ips: list[dict] = field(default_factory=list)  # {allocation, index, slot}
    source_dest_off: list[int] = field(default_factory=list)  # device indexes
    target_groups: list[dict] = field(default_factory=list)  # {arn, port}
    classic_load_balancers: list[str] = field(default_factory=list)
    dns_records: list[dict] = field(default_factory=list)
    holders: dict[str, str] = field(default_factory=dict)  # allocation -> holder, if held


@dataclass
class Restore:
    """One server's restore in a run: its backup, plan, instances, timings and result."""

    server: str
    image: dict | None = None
    plan: Plan | None = None
    ids: list[str] = field(default_factory=list)
    stage: str = "planned"  # planned, launched, running, ok, checking, done
    at: dict[str, float] = field(default_factory=dict)  # seconds into the run, by stage
    deadline: float = 0.0  # monotonic: WAIT_TIMEOUT_MINUTES after RunInstances accepted it
    allocations: list[dict] = field(default_factory=list)  # Elastic IPs to associate
    problems: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)  # a drill's DRILL_CHECK: command, status

    @property
    def error(self) -> str | None:
        """What went wrong, naming the instances launched, or None."""
        if not self.problems:
            return None
        text = "; ".join(self.problems)
        return f"after launching {', '.join(self.ids)}: {text}" if self.ids else text

    def fail(self, problem: str) -> None:
        """Record a failure; this server is done. The report names it at the end."""
        self.problems.append(problem)
        self.stage = "done"


class Run:
    """This run: when it began (monotonic and UTC), its client token, and whether it
    restores a fleet (log lines then name their server)."""

    def __init__(self, fleet: bool = False) -> None:
        self.start, self.utc = time.monotonic(), datetime.now(timezone.utc)
        self.fleet, self.token = fleet, ""

    def since(self) -> float:
        """Seconds since the run began, to a tenth."""
        return round(time.monotonic() - self.start, 1)

    def prefix(self, restore: Restore) -> str:
        """ "<server>: " before a log line in a fleet."""
        return f"{restore.server}: " if self.fleet else ""


def plan_launch(
    config: dict, image: dict, recorded: Recorded, original_alive: bool, token: str,
    region: str | None = None,
) -> Plan:  # fmt: skip
    """Build RunInstances parameters from the config, falling back to what was recorded."""
    warnings: list[str] = []
    if recorded.note:
        warnings.append(f"image {image['ImageId']}: {recorded.note}")
    if not recorded.launch:
        recorded = replace(recorded, launch=basic_launch(recorded))
    if recorded.source_region and region and recorded.source_region != region:
        recorded = in_region(config, image, recorded, region, warnings)
    launch = recorded.launch
    pick = lambda setting, fallback: config[setting] or fallback  # noqa: E731
    instance_type = pick("INSTANCE_TYPE", recorded.instance_type)
    nics = planned_interfaces(config, recorded)
    subnet = nics[0]["subnet"] if nics else None
    missing = [
        name for name, v in (("INSTANCE_TYPE", instance_type), ("SUBNET_ID", subnet)) if not v
    ]
    if missing:
        raise RestoreError(
            f"image {image['ImageId']} has no recorded {' or '.join(missing)}; set it in the config"
        )
    name = restored_name(config, recorded, original_alive, warnings)
    attributes = planned_attributes(config, recorded, instance_type)
    chosen = {a.name: a.planned for a in attributes}
    params: dict[str, Any] = {
        "ImageId": image["ImageId"],
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": instance_type,
        "ClientToken": token,
        "TagSpecifications": tag_specifications(config, image, recorded, name),
        **instance_options(chosen),
    }
    params.update(network_params(nics, config["PUBLIC_IP"], warnings))
    profile = config["IAM_INSTANCE_PROFILE"] or trusted_profile(config, recorded, image)
    optional = {
        "KeyName": pick("KEY_NAME", recorded.key_name),
        "IamInstanceProfile": instance_profile(profile),
        "UserData": build_user_data(recorded.platform, config["HOSTNAME"], config["USER_DATA"]),
        "BlockDeviceMappings": volume_overrides(config, image),
    }
    params.update({k: v for k, v in optional.items() if v})
    attributes += interface_attributes(config, recorded, nics)
    if len(nics) > 1:  # EC2 gives a public IP at launch to a lone interface only
        mark_attributes(attributes, ["public IP"])
    plan = Plan(image, recorded, params, None, name, warnings, attributes=attributes)
    plan.source_dest_off = [n["index"] for n in nics if n.get("source_dest_check") is False]
    plan.elastic_ips = planned_elastic_ips(config, launch, nics, warnings)
    plan.elastic_ip = next((e["allocation"] for e in plan.elastic_ips if e["index"] == 0
                            and e["slot"] == 0), None)  # fmt: skip
    plan.target_groups = planned_target_groups(config, launch)
    plan.classic_load_balancers = planned_classic(config, launch)
    plan.dns_records = list(config["DNS_RECORDS"])
    attributes += load_balancer_attributes(config, launch, plan)
    plan.others = [
        other_instance(params, nics, name, n, token) for n in range(2, config["COUNT"] + 1)
    ]
    if plan.others and (plan.elastic_ips or plan.target_groups or plan.dns_records):
        warnings.append(
            f"COUNT={config['COUNT']}: Elastic IPs, target groups and DNS records go to the "
            f"first instance ({name}) only"
        )
    if recorded.platform == "windows" and original_alive and config["DRILL"]:
        warnings.append(
            f"the drill instance has the computer name and SID of {recorded.instance_id}, "
            "which still runs: keep DRILL_SUBNET_ID from reaching its domain controllers"
        )
    elif recorded.platform == "windows" and original_alive and not config["HOSTNAME"]:
        warnings.append(
            f"original instance {recorded.instance_id} still runs: the new Windows instance has "
            "the same computer name and SID, which clash on a network or in a domain; set "
            "HOSTNAME to rename it"
        )
    return plan


# Each attribute a setting can override: (attribute, setting, launch record key).
SETTABLE = [
    ("tenancy", "TENANCY", "tenancy"),
    ("placement group", "PLACEMENT_GROUP", "placement_group"),
    ("partition", None, "partition"),
    ("host", "HOST_ID", "host_id"),
    ("host resource group", None, "host_resource_group"),
    ("affinity", None, "affinity"),
    ("CPU options", "CPU_OPTIONS", "cpu_options"),
    ("CPU credits", "CREDIT_SPECIFICATION", "credits"),
    ("EBS-optimized", "EBS_OPTIMIZED", "ebs_optimized"),
    ("hibernation", None, "hibernation"),
    ("Nitro Enclaves", None, "nitro_enclave"),
    ("capacity reservation", None, "capacity_reservation"),
    ("IMDS tokens", "IMDSV2", "http_tokens"),
    ("IMDS hop limit", None, "http_hop_limit"),
    ("IMDS endpoint", None, "http_endpoint"),
    ("IMDS IPv6 endpoint", None, "http_ipv6"),
    ("IMDS instance tags", None, "metadata_tags"),
    ("host name type", None, "hostname_type"),
    ("DNS A record", None, "dns_a_record"),
    ("DNS AAAA record", None, "dns_aaaa_record"),
    ("termination protection", "TERMINATION_PROTECTION", "termination_protection"),
    ("stop protection", "STOP_PROTECTION", "stop_protection"),
    ("shutdown behaviour", "SHUTDOWN_BEHAVIOR", "shutdown_behavior"),
    ("detailed monitoring", "MONITORING", "monitoring"),
    ("auto-recovery", "AUTO_RECOVERY", "auto_recovery"),
]
METADATA_KEYS = {"HttpTokens": "IMDS tokens", "HttpPutResponseHopLimit": "IMDS hop limit",
                 "HttpEndpoint": "IMDS endpoint", "HttpProtocolIpv6": "IMDS IPv6 endpoint",
                 "InstanceMetadataTags": "IMDS instance tags"}  # fmt: skip
DNS_NAME_KEYS = {"HostnameType": "host name type", "EnableResourceNameDnsARecord": "DNS A record",
                 "EnableResourceNameDnsAAAARecord": "DNS AAAA record"}  # fmt: skip
# What EC2 gives an attribute that is neither recorded nor set.
EC2_DEFAULTS = {**{name: LAUNCH_DEFAULTS[key] for name, _, key in SETTABLE},
                "IMDS tokens": "required"}  # this tool's default: IMDSv2  # fmt: skip


def planned_attributes(config: dict, recorded: Recorded, instance_type: str) -> list[Attribute]:
    """Each settable attribute: its setting, else as recorded, else EC2's default."""
    overrides = {
        **{METADATA_KEYS[k]: v for k, v in (config["METADATA_OPTIONS"] or {}).items()},
        **{DNS_NAME_KEYS[k]: v for k, v in (config["PRIVATE_DNS_NAME_OPTIONS"] or {}).items()},
    }
    made = []
    for name, setting, key in SETTABLE:
        value = config[setting] if setting else None
        value = overrides.get(name) if value is None else value
        was = recorded.launch.get(key)
        if value is not None:
            made.append(Attribute(name, was, None if value is False and key in NONE_WHEN_FALSE
                                  else value, "overridden"))  # fmt: skip
        elif key in recorded.launch:
            made.append(Attribute(name, was, was, "recorded"))
        else:
            made.append(Attribute(name, None, EC2_DEFAULTS[name], "default"))
    cpu = next(a for a in made if a.name == "CPU options")
    if cpu.origin == "recorded" and cpu.planned and instance_type != recorded.instance_type:
        cpu.planned, cpu.origin = None, "default"  # the recorded cores fit the recorded type
    credits = next(a for a in made if a.name == "CPU credits")
    if not BURSTABLE_RE.match(instance_type):
        credits.planned = None
    return made


NONE_WHEN_FALSE = {"placement_group", "host_id", "cpu_options"}  # False: leave it out


def instance_options(chosen: dict[str, Any]) -> dict:
    """RunInstances' options for the chosen attributes (those left at EC2's default are
    sent too where EC2's own default could differ, such as for IMDS)."""
    placement = {
        "Tenancy": chosen["tenancy"],
        "GroupName": chosen["placement group"],
        "PartitionNumber": chosen["partition"],
        "HostId": chosen["host"],
        "HostResourceGroupArn": chosen["host resource group"],
        "Affinity": chosen["affinity"],
    }
    options: dict[str, Any] = {
        "Placement": {k: v for k, v in placement.items() if v is not None},
        "EbsOptimized": bool(chosen["EBS-optimized"]),
        "MetadataOptions": {k: chosen[name] for k, name in METADATA_KEYS.items()},
        "PrivateDnsNameOptions": {k: chosen[name] for k, name in DNS_NAME_KEYS.items()},
        "DisableApiTermination": bool(chosen["termination protection"]),
        "DisableApiStop": bool(chosen["stop protection"]),
        "InstanceInitiatedShutdownBehavior": chosen["shutdown behaviour"],
        "Monitoring": {"Enabled": bool(chosen["detailed monitoring"])},
        "MaintenanceOptions": {"AutoRecovery": chosen["auto-recovery"]},
    }
    if chosen["CPU options"]:
        options["CpuOptions"] = dict(chosen["CPU options"])
    if chosen["CPU credits"]:
        options["CreditSpecification"] = {"CpuCredits": chosen["CPU credits"]}
    if chosen["hibernation"]:
        options["HibernationOptions"] = {"Configured": True}
    if chosen["Nitro Enclaves"]:
        options["EnclaveOptions"] = {"Enabled": True}
    if chosen["capacity reservation"] not in (None, "open"):
        preference = chosen["capacity reservation"]
        options["CapacityReservationSpecification"] = {"CapacityReservationPreference": preference}
    return options


def planned_interfaces(config: dict, recorded: Recorded) -> list[dict]:
    """The network interfaces to launch with, by device index: NETWORK_INTERFACES, else as
    recorded (with SUBNET_ID, SECURITY_GROUP_IDS and PRIVATE_IP for the primary one)."""
    if config["NETWORK_INTERFACES"] is not None:
        return [interface_setting(n, i) for i, n in enumerate(config["NETWORK_INTERFACES"])]
    nics = [dict(n) for n in recorded.launch.get("interfaces", [])]
    if not nics:
        nics = [{"index": 0, "subnet": None, "groups": [], "ip": None}]
    if config["DRILL"]:  # every interface in the drill's subnet and groups, on new addresses
        for nic in nics:
            nic.update(subnet=config["DRILL_SUBNET_ID"], fixed=False,
                       groups=list(config["DRILL_SECURITY_GROUP_IDS"]),
                       secondary=[None] * len(nic.get("secondary", [])))  # fmt: skip
        return nics
    first = nics[0]
    if config["SUBNET_ID"]:
        first["subnet"] = config["SUBNET_ID"]
    if config["SECURITY_GROUP_IDS"]:
        first["groups"] = list(config["SECURITY_GROUP_IDS"])
    address = config["PRIVATE_IP"]
    if address == "same" and not first.get("ip"):
        raise RestoreError('PRIVATE_IP = "same", but the backup recorded no private address')
    for nic in nics:
        nic["fixed"] = address == "same" and bool(nic.get("ip"))
    if address not in (None, "same"):
        first.update(ip=address, fixed=True, secondary=[None] * len(first.get("secondary", [])))
    return nics


def interface_setting(entry: dict, index: int) -> dict:
    """One NETWORK_INTERFACES entry as a planned interface."""
    return {
        "index": index,
        "subnet": entry["subnet_id"],
        "groups": list(entry.get("security_group_ids", [])),
        "ip": entry.get("private_ip"),
        "secondary": [None] * entry.get("secondary_private_ips", 0),
        "ipv6": entry.get("ipv6_addresses", 0),
        "source_dest_check": entry.get("source_dest_check", True),
        "description": entry.get("description", ""),
        "delete_on_termination": entry.get("delete_on_termination", True),
        "fixed": bool(entry.get("private_ip")),
        "setting": True,
    }


def network_params(nics: list[dict], public: Any, warnings: list[str]) -> dict:
    """SubnetId and friends for one plain interface; else the NetworkInterfaces form."""
    first = nics[0]
    wants_public = first.get("public_ip", False) if public is None else public
    plain = len(nics) == 1 and not any(
        first.get(k) for k in ("secondary", "ipv6", "description")
    ) and first.get("delete_on_termination", True) and not wants_public  # fmt: skip
    if plain:
        params: dict[str, Any] = {"SubnetId": first["subnet"]}
        if first.get("groups"):
            params["SecurityGroupIds"] = list(first["groups"])
        if first.get("fixed") and first.get("ip"):
            params["PrivateIpAddress"] = first["ip"]
        return params
    if wants_public and len(nics) > 1:
        warnings.append(
            "the original had a public IP assigned at launch, which EC2 gives only to an "
            "instance launched with one network interface: the new one has none; give it an "
            "Elastic IP"
        )
        wants_public = False
    return {"NetworkInterfaces": [interface_spec(n, wants_public) for n in nics]}


def interface_spec(nic: dict, public: bool) -> dict:
    """One NetworkInterfaces entry of RunInstances."""
    spec: dict[str, Any] = {
        "DeviceIndex": nic["index"],
        "SubnetId": nic["subnet"],
        "DeleteOnTermination": nic.get("delete_on_termination", True),
    }
    if nic.get("groups"):
        spec["Groups"] = list(nic["groups"])
    if nic.get("description"):
        spec["Description"] = nic["description"]
    secondary = nic.get("secondary", [])
    if nic.get("fixed") and nic.get("ip"):
        spec["PrivateIpAddresses"] = [{"PrivateIpAddress": nic["ip"], "Primary": True}] + [
            {"PrivateIpAddress": ip, "Primary": False} for ip in secondary if ip
        ]
        if not all(secondary):
            spec["SecondaryPrivateIpAddressCount"] = len(secondary)
            spec["PrivateIpAddress"] = spec.pop("PrivateIpAddresses")[0]["PrivateIpAddress"]
    elif secondary:
        spec["SecondaryPrivateIpAddressCount"] = len(secondary)
    if nic.get("ipv6"):
        spec["Ipv6AddressCount"] = nic["ipv6"]
    if public and nic["index"] == 0:
        spec["AssociatePublicIpAddress"] = True
    return spec


def interface_attributes(config: dict, recorded: Recorded, nics: list[dict]) -> list[Attribute]:
    """The per-interface attributes, for the dry run and the check after launch."""
    was = {n["index"]: n for n in recorded.launch.get("interfaces", [])}
    made = [Attribute("network interfaces", len(was) or None, len(nics),
                      origin_of(config["NETWORK_INTERFACES"] is not None, bool(was)))]  # fmt: skip
    for nic in nics:
        old, label = was.get(nic["index"], {}), f"interface {nic['index']}"
        fields = [
            ("subnet", "subnet", nic["subnet"]),
            ("security groups", "groups", sorted(nic.get("groups", []))),
            ("secondary IPs", "secondary", len(nic.get("secondary", []))),
            ("IPv6 addresses", "ipv6", nic.get("ipv6", 0)),
            ("source/dest check", "source_dest_check", nic.get("source_dest_check", True)),
            ("description", "description", nic.get("description", "")),
            ("delete on termination", "delete_on_termination",
             nic.get("delete_on_termination", True)),
        ]  # fmt: skip
        if nic.get("fixed"):
            fields.append(("private IP", "ip", nic.get("ip")))
        for title, key, planned in fields:
            before = old.get(key)
            if key == "secondary" and before is not None:
                before = len(before)
            if key == "groups" and before is not None:
                before = sorted(before)
            overridden = nic.get("setting") or (before is not None and before != planned)
            made.append(Attribute(f"{label} {title}", before, planned,
                                  origin_of(overridden, before is not None)))  # fmt: skip
    first = was.get(0, {})
    public = config["PUBLIC_IP"]
    recorded_public = first.get("public_ip") if "public_ip" in first else None
    planned_public = recorded_public if public is None else public
    made.append(Attribute("public IP", recorded_public, bool(planned_public),
                          origin_of(public is not None, recorded_public is not None)))  # fmt: skip
    return made


def origin_of(overridden: bool, recorded: bool) -> str:
    """Where a planned value came from."""
    return "overridden" if overridden else "recorded" if recorded else "default"


def planned_elastic_ips(
    config: dict, launch: dict, nics: list[dict], warnings: list[str]
) -> list[dict]:
    """The Elastic IPs to associate, each on its interface and address slot (0: primary)."""
    setting = config["ELASTIC_IP"]
    if setting is None:
        return []
    if setting != "same":
        return [{"allocation": setting, "index": 0, "slot": 0}]
    by_index = {n["index"]: n for n in launch.get("interfaces", [])}
    made = []
    for eip in launch.get("elastic_ips", []):
        nic = by_index.get(eip["index"], {})
        addresses = [nic.get("ip"), *nic.get("secondary", [])]
        slot = addresses.index(eip["ip"]) if eip["ip"] in addresses else 0
        if eip["index"] >= len(nics) or slot > len(nics[eip["index"]].get("secondary", [])):
            warnings.append(
                f"Elastic IP {eip['allocation']} was on interface {eip['index']} ({eip['ip']}), "
                "which this restore does not have: it is not associated"
            )
            continue
        made.append({"allocation": eip["allocation"], "index": eip["index"], "slot": slot})
    return made


def planned_target_groups(config: dict, launch: dict) -> list[dict]:
    """TARGET_GROUPS: "same" (as recorded), or a list of ARNs or {"arn", "port"}."""
    setting = config["TARGET_GROUPS"]
    if setting == "same":
        return [dict(t) for t in launch.get("target_groups", [])]
    ports = {t["arn"]: t.get("port") for t in launch.get("target_groups", [])}
    return [
        {"arn": t, "port": ports.get(t)} if isinstance(t, str) else {"port": None, **t}
        for t in setting
    ]


def planned_classic(config: dict, launch: dict) -> list[str]:
    """CLASSIC_LOAD_BALANCERS: "same" (as recorded), or a list of names."""
    setting = config["CLASSIC_LOAD_BALANCERS"]
    return list(launch.get("classic_load_balancers", []) if setting == "same" else setting)


def load_balancer_attributes(config: dict, launch: dict, plan: Plan) -> list[Attribute]:
    """One attribute per target group and Classic Load Balancer, recorded or set."""
    recorded_groups = {(t["arn"], t.get("port")) for t in launch.get("target_groups", [])}
    recorded_classic = set(launch.get("classic_load_balancers", []))
    made = []
    for group in plan.target_groups:
        key = (group["arn"], group.get("port"))
        was = "registered" if key in recorded_groups else None
        origin = origin_of(config["TARGET_GROUPS"] != "same", was is not None)
        made.append(Attribute(f"target group {target_label(group)}", was, "registered", origin))
    for name in plan.classic_load_balancers:
        was = "registered" if name in recorded_classic else None
        origin = origin_of(config["CLASSIC_LOAD_BALANCERS"] != "same", bool(was))
        made.append(Attribute(f"Classic ELB {name}", was, "registered", origin))
    for eip in plan.elastic_ips:
        origin = origin_of(config["ELASTIC_IP"] != "same", True)
        where = address_slot(eip)
        made.append(Attribute(f"Elastic IP {eip['allocation']}", where, where, origin))
    return made


def target_label(group: dict) -> str:
    """A target group's name (from its ARN) and port."""
    name = group["arn"].split(":")[-1].split("/")[1] if "/" in group["arn"] else group["arn"]
    return f"{name}:{group['port']}" if group.get("port") else name


def address_slot(eip: dict) -> str:
    """Where an Elastic IP sits: its interface and address."""
    where = "primary IP" if eip["slot"] == 0 else f"secondary IP {eip['slot']}"
    return f"interface {eip['index']} {where}"


def other_instance(params: dict, nics: list[dict], name: str, n: int, token: str) -> dict:
    """RunInstances' parameters for instance n of COUNT: named <name>-n, with new addresses."""
    other = {k: v for k, v in params.items() if k != "PrivateIpAddress"}
    suffix = f"-{n}"
    other["ClientToken"] = token[: 64 - len(suffix)] + suffix
    other["TagSpecifications"] = [
        {**spec, "Tags": [{**t, "Value": f"{name}{suffix}"} if t["Key"] == "Name" else t
                          for t in spec["Tags"]]}
        for spec in params["TagSpecifications"]
    ]  # fmt: skip
    if "NetworkInterfaces" in params:
        loose = [{**nic, "fixed": False} for nic in nics]
        other["NetworkInterfaces"] = [interface_spec(nic, False) for nic in loose]
        for spec, was in zip(other["NetworkInterfaces"], params["NetworkInterfaces"], strict=True):
            if was.get("AssociatePublicIpAddress"):
                spec["AssociatePublicIpAddress"] = True
    return other


def in_region(
    config: dict, image: dict, recorded: Recorded, region: str, warnings: list[str]
) -> Recorded:
    """A copy's record for a launch in another region than the backup's.

    Every id the backup recorded belongs to the source region: subnets, security groups,
    Elastic IPs, placement groups, hosts and target groups are mapped through
    REGION_MAP[region], or replaced by their settings, and never used as they are. Private
    addresses are never kept.
    """
    source, mapping = recorded.source_region, config["REGION_MAP"].get(region, {})
    if config["PRIVATE_IP"] == "same":
        raise RestoreError(
            f'PRIVATE_IP = "same": the recorded address is in {source}; set an address in '
            f"{region} or None"
        )
    launch = dict(recorded.launch)
    if config["NETWORK_INTERFACES"] is None:
        launch["interfaces"] = [
            mapped_interface(config, image, nic, mapping, source, region)
            for nic in launch.get("interfaces", [])
        ]
    launch["elastic_ips"] = mapped_list(
        launch.get("elastic_ips", []), "allocation", mapping, config["ELASTIC_IP"] == "same",
        f"is in {source}, so none is associated in {region}; set ELASTIC_IP to an "
        f"allocation in {region}, or map it in REGION_MAP", "Elastic IP", warnings,
    )  # fmt: skip
    launch["target_groups"] = mapped_list(
        launch.get("target_groups", []), "arn", mapping, config["TARGET_GROUPS"] == "same",
        f"is in {source}: the instance is not registered in it; map it in REGION_MAP or set "
        "TARGET_GROUPS", "target group", warnings,
    )  # fmt: skip
    for key, setting, what in (("placement_group", "PLACEMENT_GROUP", "placement group"),
                               ("host_id", "HOST_ID", "dedicated host"),
                               ("host_resource_group", None, "host resource group")):  # fmt: skip
        old = launch.get(key)
        if old and not (setting and config[setting] is not None):
            launch[key] = mapping.get(old)
            if not launch[key]:
                warnings.append(f"{what} {old} is in {source}: left out in {region}; map it in "
                                f"REGION_MAP{f' or set {setting}' if setting else ''}")  # fmt: skip
    classic = launch.get("classic_load_balancers", [])
    launch["classic_load_balancers"] = [mapping[n] for n in classic if n in mapping]
    if len(launch["classic_load_balancers"]) < len(classic):
        warnings.append(f"Classic Load Balancers {', '.join(classic)} are in {source}: only "
                        "those mapped in REGION_MAP are used")  # fmt: skip
    first = (launch.get("interfaces") or [{}])[0]
    eip = next((e["allocation"] for e in launch["elastic_ips"] if e["index"] == 0), None)
    key = mapping.get(recorded.key_name or "", recorded.key_name)
    return replace(
        recorded, subnet_id=first.get("subnet"), security_group_ids=first.get("groups", []),
        private_ip=None, elastic_ip=eip, key_name=key, launch=launch,
    )  # fmt: skip


def mapped_interface(
    config: dict, image: dict, nic: dict, mapping: dict, source: str | None, region: str
) -> dict:
    """One recorded interface with its subnet and groups mapped to the region, and no
    fixed address; an interface that cannot be mapped stops the restore."""
    subnet = mapping.get(nic.get("subnet") or "")
    groups = [mapping.get(g) for g in nic.get("groups", [])]
    primary = nic["index"] == 0
    drill = config["DRILL"]  # a drill puts every interface in its own subnet and groups
    has_subnet = subnet or drill or (primary and config["SUBNET_ID"])
    has_groups = all(groups) or drill or (primary and config["SECURITY_GROUP_IDS"])
    if not has_subnet or not has_groups:
        was = ", ".join([nic.get("subnet") or "-", *nic.get("groups", [])])
        settings = ("SUBNET_ID and SECURITY_GROUP_IDS (or --subnet-id and "
                    "--security-group-ids)" if primary else "NETWORK_INTERFACES")  # fmt: skip
        raise RestoreError(
            f"image {image['ImageId']} is a copy from {source}, and the subnet and security "
            f"groups it recorded for interface {nic['index']} ({was}) are in {source}. Set "
            f"{settings} to ids in {region}, or map the recorded ids to them in "
            f"REGION_MAP[{region!r}]"
        )
    return {**nic, "subnet": subnet, "groups": [g for g in groups if g], "ip": None,
            "secondary": [None] * len(nic.get("secondary", []))}  # fmt: skip


def mapped_list(
    items: list[dict], key: str, mapping: dict, wanted: bool, why: str, what: str,
    warnings: list[str],
) -> list[dict]:  # fmt: skip
    """Recorded items whose id REGION_MAP maps, with the mapped id; warn about the rest
    when the setting asks for them as recorded."""
    kept = []
    for item in items:
        if item[key] in mapping:
            kept.append({**item, key: mapping[item[key]]})
        elif wanted:
            warnings.append(f"{what} {item[key]} {why}")
    return kept


def restored_name(config: dict, recorded: Recorded, original_alive: bool, warnings: list) -> str:
    """NAME, or the original's Name, with "-restored" while the original still exists; a
    drill's instance is <server>-drill-<UTC time>."""
    if config["NAME"]:
        return config["NAME"]
    if config["DRILL"]:
        return f"{recorded.server or 'restored'}-drill-{config['DRILL_STAMP']}"
    name = recorded.instance_tags.get("Name") or recorded.server or "restored"
    if original_alive:
        warnings.append(
            f"original instance {recorded.instance_id} still exists, so the new instance is "
            f"named {name}-restored; set NAME to choose"
        )
        name += "-restored"
    return name


def tag_specifications(config: dict, image: dict, recorded: Recorded, name: str) -> list[dict]:
    """The original's tags, then TAGS, then Name and the restored-from tags. A drill's
    instance leaves off the tags the backup selects servers by, and is tagged TAG_DRILL."""
    tags = {**recorded.instance_tags, **config["TAGS"], "Name": name}
    if config["DRILL"]:
        for key in recorded.select_tag_keys:
            tags.pop(key, None)
        tags[TAG_DRILL] = recorded.server or image["ImageId"]
        tags[TAG_DRILL_RUN] = config["DRILL_RUN"]
    tags[TAG_RESTORED_FROM] = image["ImageId"]
    if recorded.created:
        tags[TAG_RESTORED_BACKUP_TIME] = recorded.created
    if len(tags) > MAX_TAGS:
        raise RestoreError(f"{len(tags)} tags for the new instance; EC2 allows 50: trim TAGS")
    pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
    kinds = ("instance", "volume", "network-interface")
    return [{"ResourceType": kind, "Tags": pairs} for kind in kinds]


def trusted_profile(config: dict, recorded: Recorded, image: dict) -> str | None:
    """The instance profile the image's tag names, if ALLOWED_INSTANCE_PROFILES allows it.

    The profile hands its role to the new instance, and a tag is only as trustworthy
    as whoever may tag the image: so a recorded profile outside the list stops the
    restore before launch. IAM_INSTANCE_PROFILE, set by the operator, is not checked.
    """
    wanted, allowed = recorded.instance_profile, config["ALLOWED_INSTANCE_PROFILES"]
    if not wanted or allowed is None:
        return wanted
    name = wanted.rsplit("/", 1)[-1]
    if wanted in allowed or name in allowed:
        return wanted
    raise RestoreError(
        f"image {image['ImageId']} names instance profile {wanted} (in its "
        f"{TAG_INSTANCE_PROFILE} tag), which ALLOWED_INSTANCE_PROFILES does not list; add it "
        "there, or set IAM_INSTANCE_PROFILE to the one to use"
    )


def instance_profile(value: str | None) -> dict | None:
    """IamInstanceProfile by ARN or by name."""
    if not value:
        return None
    return {"Arn": value} if value.startswith("arn:") else {"Name": value}


def volume_overrides(config: dict, image: dict) -> list[dict] | None:
    """Apply VOLUME_TYPE, ENCRYPTED, KMS_KEY_ID, DELETE_ON_TERMINATION and
    VOLUME_INITIALIZATION_RATE to every EBS volume (the rate: those made from a snapshot)."""
    ebs: dict[str, Any] = {}
    if config["VOLUME_TYPE"]:
        ebs["VolumeType"] = config["VOLUME_TYPE"]
    if config["ENCRYPTED"] is not None or config["KMS_KEY_ID"]:
        ebs["Encrypted"] = config["ENCRYPTED"] is not False
    if config["KMS_KEY_ID"]:
        ebs["KmsKeyId"] = config["KMS_KEY_ID"]
    if config["DELETE_ON_TERMINATION"] is not None:
        ebs["DeleteOnTermination"] = config["DELETE_ON_TERMINATION"]
    rate = config["VOLUME_INITIALIZATION_RATE"]
    if not ebs and rate is None:
        return None
    mappings = [m for m in image.get("BlockDeviceMappings", []) if "Ebs" in m]
    overrides = []
    for mapping in mappings:
        wanted = dict(ebs)
        if rate is not None and mapping["Ebs"].get("SnapshotId"):
            wanted["VolumeInitializationRate"] = rate
        if wanted:
            overrides.append({"DeviceName": mapping["DeviceName"], "Ebs": wanted})
    return overrides or None


# --- AWS access ---------------------------------------------------------------------------------


class Clients:
    """The clients a restore uses, from one session with botocore's standard retries: EC2,
    and IAM, ELB and Route 53 made the first time they are needed."""

    def __init__(self, session: boto3.Session, client_config: Config) -> None:
        self.session, self.config = session, client_config
        self.ec2 = session.client("ec2", config=client_config)
        pace(self.ec2)
        self._made: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """The one client of a service."""
        if service not in self._made:
            self._made[service] = self.session.client(service, config=self.config)
        return self._made[service]

    iam = property(lambda self: self.client("iam"))
    elbv2 = property(lambda self: self.client("elbv2"))
    elb = property(lambda self: self.client("elb"))
    route53 = property(lambda self: self.client("route53"))
    ssm = property(lambda self: self.client("ssm"))


def make_clients(config: dict) -> Clients:
    """Build the clients: region, profile, ROLE_ARN and botocore's standard retries."""
    session, client_config = base_session(config["PROFILE"], config["REGION"])
    if config["ROLE_ARN"]:
        name = SESSION_NAME_BAD_CHARS.sub("-", f"{TOOL}-restore-{getpass.getuser()}")[:64]
        session = assume_role(session, config["ROLE_ARN"], name, client_config)
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


def error_text(err: Exception) -> str:
    """A one-line description of an AWS error, with its code."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(err).__name__}: {err}"


def describe(ec2: Any, what: str, call: str, key: str, **kwargs: Any) -> list[dict]:
    """A describe call whose not-found error (or empty answer) is a RestoreError naming `what`."""
    try:
        found = getattr(ec2, call)(**kwargs).get(key, [])
    except ClientError as err:
        if err.response["Error"]["Code"] not in NOT_FOUND_CODES:
            raise
        raise RestoreError(f"{what} does not exist ({error_text(err)})") from None
    if not found:
        raise RestoreError(f"{what} does not exist")
    return found


def managed_images(
    ec2: Any, server: str | list[str] | None, schedule: str | None, pool: str | None = None
) -> list[dict]:
    """This tool's images in this account and region, newest first: of one server, of
    several (one filter value each, FILTER_VALUES_MAX a call), or of every server."""
    names = [server] if isinstance(server, str) else server
    images: list[dict] = []
    for start in range(0, len(names or [None]), FILTER_VALUES_MAX):
        filters = [{"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]}]
        if names:
            filters.append({"Name": f"tag:{TAG_SERVER}",
                            "Values": names[start : start + FILTER_VALUES_MAX]})  # fmt: skip
        for key, value in ((TAG_SCHEDULE, schedule), (TAG_POOL, pool)):
            if value:
                filters.append({"Name": f"tag:{key}", "Values": [value]})
        pages = ec2.get_paginator("describe_images").paginate(
            Owners=["self"], Filters=filters, IncludeDisabled=True
        )
        for page in pages:
            images += page.get("Images", [])
    return sorted(images, key=lambda i: (backup_time(i), i["ImageId"]), reverse=True)


def backup_time(image: dict) -> datetime:
    """When the backup was taken: its created tag (a copy's CreationDate is the copy's)."""
    text = read_recorded(image).created or image.get("CreationDate") or ""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


# --- Look: find the backup and what surrounds it --------------------------------------------------


def find_image(ec2: Any, config: dict) -> dict:
    """AMI_ID's image; a disabled one too (the restore enables it), or one in the Recycle
    Bin (the restore brings it back)."""
    what = f"image {config['AMI_ID']}"
    try:
        image = describe(
            ec2, what, "describe_images", "Images", ImageIds=[config["AMI_ID"]],
            IncludeDisabled=True,
        )[0]  # fmt: skip
    except RestoreError:
        binned = list(paginate_bin(ec2, ImageIds=[config["AMI_ID"]]))
        if not binned:
            raise
        return {**binned[0], "State": IN_RECYCLE_BIN}
    if image["State"] not in (AVAILABLE, DISABLED):
        raise RestoreError(f"image {image['ImageId']} is {image['State']}, not available")
    return image


def pick_images(ec2: Any, config: dict) -> list[Restore]:
    """Each server's backup to restore, from one DescribeImages for them all: SERVER,
    SERVERS, or (--all) every server with an available backup here."""
    names = [config["SERVER"]] if config["SERVER"] else config["SERVERS"]
    images = managed_images(ec2, names, config["SCHEDULE"], config["POOL"])
    by_server: dict[str, list[dict]] = {}
    for image in images:
        by_server.setdefault(read_recorded(image).server or "", []).append(image)
    if names is None:
        names = sorted(s for s, found in by_server.items() if s and usable(found, config))
        if not names:
            raise RestoreError(no_backup_message(ec2, config, "any server"))
    restores = []
    for name in names:
        restore = Restore(name)
        with one_server(restore, config["FLEET"]):
            restore.image = pick_image(ec2, config, name, by_server.get(name, []))
        restores.append(restore)
    return restores


def usable(images: list[dict], config: dict) -> list[dict]:
    """The available backups at or before BACKUP_BEFORE, newest first."""
    before = config["BACKUP_BEFORE"]
    return [
        i
        for i in images
        if i["State"] == AVAILABLE and (before is None or backup_time(i) <= before)
    ]


def pick_image(ec2: Any, config: dict, server: str, images: list[dict]) -> dict:
    """The server's newest available backup (a newer disabled one is named in a warning);
    for a drill with DRILL_PICK = "random", any available one, so old ones are tested too."""
    found = usable(images, config)
    before = config["BACKUP_BEFORE"]
    newer = [
        i["ImageId"]
        for i in images
        if i["State"] == DISABLED
        and (before is None or backup_time(i) <= before)
        and (not found or backup_time(i) > backup_time(found[0]))
    ]
    if newer:
        log.warning(
            "newer backups of %s are disabled: %s; to restore one, name it with --ami "
            "(the restore enables it first)", server, ", ".join(newer),
        )  # fmt: skip
    if not found:
        what = f"server {server!r}"
        raise RestoreError(
            no_backup_message(ec2, config, what) if not config["FLEET"]
            else f"no available backup of {what}{backup_scope(config)}"
        )  # fmt: skip
    pools = sorted({p for p in (image_tag(i, TAG_POOL) for i in found) if p})
    if len(pools) > 1:
        raise RestoreError(
            f"server {server!r} has backups in several pools ({', '.join(pools)}): "
            "backup configs that each have a server of that name; choose one with POOL "
            "(or --pool)"
        )
    if config["DRILL"] and config["DRILL_PICK"] == "random":
        return random.SystemRandom().choice(found)
    return found[0]


def restore_from_recycle_bin(ec2: Any, binned: dict) -> dict:
    """RestoreImageFromRecycleBin, then each of its snapshots that is in the bin too;
    return the image as DescribeImages shows it."""
    image_id = binned["ImageId"]
    ec2.restore_image_from_recycle_bin(ImageId=image_id)
    log.info("%s: restored from the Recycle Bin", image_id)
    deadline = time.monotonic() + BIN_RESTORE_SECONDS
    while True:  # EC2 is eventually consistent: the image may take a moment to show
        found = ec2.describe_images(ImageIds=[image_id], IncludeDisabled=True).get("Images")
        if found and found[0]["State"] in (AVAILABLE, DISABLED):
            break
        if time.monotonic() > deadline:
            raise RestoreError(
                f"image {image_id} was restored from the Recycle Bin but is not available "
                f"after {BIN_RESTORE_SECONDS} s; run again"
            )
        time.sleep(POLL_FIRST_SECONDS)
    image = found[0]
    snapshot_ids = [
        m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m
    ]
    present = set()
    if snapshot_ids:
        for snapshot in ec2.describe_snapshots(
            Filters=[{"Name": "snapshot-id", "Values": snapshot_ids}]
        ).get("Snapshots", []):
            present.add(snapshot["SnapshotId"])
    missing = [s for s in snapshot_ids if s not in present]
    binned = set()
    if missing:  # one call for all of them
        listed = ec2.list_snapshots_in_recycle_bin(SnapshotIds=missing).get("Snapshots", [])
        binned = {s["SnapshotId"] for s in listed}
    for snapshot_id in missing:
        if snapshot_id not in binned:
            raise RestoreError(
                f"image {image_id} is restored from the Recycle Bin, but its snapshot "
                f"{snapshot_id} is gone (is there a Recycle Bin rule for snapshots?)"
            )
        ec2.restore_snapshot_from_recycle_bin(SnapshotId=snapshot_id)
        log.info("%s: restored its snapshot %s from the Recycle Bin", image_id, snapshot_id)
    return image


def image_tag(image: dict, key: str) -> str | None:
    """One contract tag of an image (joined from its continuations), or None."""
    return joined_value({t["Key"]: t["Value"] for t in image.get("Tags", [])}, key)


def no_backup_message(ec2: Any, config: dict, what: str) -> str:
    """Say which backup is missing, and which servers do have backups."""
    servers = sorted(
        {read_recorded(i).server or "?" for i in managed_images(ec2, None, config["SCHEDULE"])}
    )
    known = ", ".join(servers) if servers else "none"
    return f"no available backup of {what}{backup_scope(config)}. Servers with backups: {known}"


def backup_scope(config: dict) -> str:
    """SCHEDULE and BACKUP_BEFORE in words, for a message."""
    scope = f" of schedule {config['SCHEDULE']}" if config["SCHEDULE"] else ""
    if config["BACKUP_BEFORE"]:
        scope += f" at or before {config['BACKUP_BEFORE']:%Y-%m-%dT%H:%M:%SZ}"
    return scope


def live_originals(ec2: Any, records: list[Recorded]) -> set[str]:
    """Which of the backed-up instances still exist (not terminated): one call a batch."""
    ids = sorted({r.instance_id for r in records if r.instance_id})
    alive = set()
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        filters = [{"Name": "instance-id", "Values": ids[start : start + FILTER_VALUES_MAX]}]
        for reservation in ec2.describe_instances(Filters=filters).get("Reservations", []):
            alive |= {i["InstanceId"] for i in reservation["Instances"]
                      if i["State"]["Name"] not in GONE_STATES}  # fmt: skip
    return alive


class Facts:
    """What the checks before launch look up, asked once for the whole fleet: one call per
    kind of resource (FILTER_VALUES_MAX values a call), and one call per distinct instance
    profile, placement group, host or load balancer, which EC2 cannot describe in a batch
    without failing whole on one that is gone."""

    def __init__(self) -> None:
        self.subnets: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.key_pairs: set[str] = set()
        self.types: dict[str, dict] = {}
        self.in_use: dict[str, list[dict]] = {}  # private address -> interfaces holding it
        self.addresses: dict[str, dict] = {}  # allocation id -> its DescribeAddresses entry
        self._asked: dict[tuple, Any] = {}

    def once(self, key: tuple, ask: Any, *args: Any, **kwargs: Any) -> Any:
        """ask(*args, **kwargs), made once per key in the run."""
        if key not in self._asked:
            self._asked[key] = ask(*args, **kwargs)
        return self._asked[key]


def gather_facts(clients: Clients, plans: list[Plan]) -> Facts:
    """Describe what every plan uses: subnets, security groups, key pairs, instance types,
    fixed private addresses and Elastic IPs, each kind in one call for the fleet."""
    facts, ec2 = Facts(), clients.ec2
    if not plans:
        return facts
    nics = [n for p in plans for n in launch_interfaces(p.params)]
    subnets = sorted({n["SubnetId"] for n in nics})
    facts.subnets = {s["SubnetId"]: s for s in filtered(ec2, "subnets", "subnet-id", subnets)}
    groups = sorted({g for n in nics for g in n.get("Groups", [])})
    found = filtered(ec2, "security_groups", "group-id", groups)
    facts.groups = {g["GroupId"]: g for g in found}
    keys = sorted({p.params["KeyName"] for p in plans if p.params.get("KeyName")})
    facts.key_pairs = {k["KeyName"] for k in filtered(ec2, "key_pairs", "key-name", keys)}
    facts.types = instance_types(ec2, sorted({p.params["InstanceType"] for p in plans}))
    fixed = sorted({a for n in nics for a in fixed_addresses(n)})
    for eni in filtered(ec2, "network_interfaces", "addresses.private-ip-address", fixed):
        for address in eni.get("PrivateIpAddresses", []):
            facts.in_use.setdefault(address["PrivateIpAddress"], []).append(eni)
    allocations = sorted({e["allocation"] for p in plans for e in p.elastic_ips})
    found = filtered(ec2, "addresses", "allocation-id", allocations)
    facts.addresses = {a["AllocationId"]: a for a in found}
    return facts


def filtered(ec2: Any, what: str, name: str, values: list[str]) -> list[dict]:
    """describe_<what> by one filter, FILTER_VALUES_MAX values a call. A value that matches
    nothing is missing from the answer, where a list of ids would fail the call whole."""
    found: list[dict] = []
    for start in range(0, len(values), FILTER_VALUES_MAX):
        filters = [{"Name": name, "Values": values[start : start + FILTER_VALUES_MAX]}]
        answer = getattr(ec2, f"describe_{what}")(Filters=filters)
        found += answer.get(DESCRIBED[what], [])
    return found


def instance_types(ec2: Any, names: list[str]) -> dict[str, dict]:
    """DescribeInstanceTypes for the names (100 a call); an unknown name fails its call,
    so that batch is asked again one name at a time, and the unknown one is left out."""
    found: dict[str, dict] = {}
    for start in range(0, len(names), INSTANCE_TYPES_MAX):
        batch = names[start : start + INSTANCE_TYPES_MAX]
        try:
            answers = ec2.describe_instance_types(InstanceTypes=batch)["InstanceTypes"]
        except ClientError as err:
            if err.response["Error"]["Code"] not in NOT_FOUND_CODES:
                raise
            answers = [] if len(batch) == 1 else [
                t for name in batch for t in instance_types(ec2, [name]).values()
            ]  # fmt: skip
        found.update({t["InstanceType"]: t for t in answers})
    return found


def launch_interfaces(params: dict) -> list[dict]:
    """RunInstances' network interfaces, in the NetworkInterfaces form either way."""
    return params.get("NetworkInterfaces") or [
        {"SubnetId": params["SubnetId"], "Groups": params.get("SecurityGroupIds", []),
         "PrivateIpAddress": params.get("PrivateIpAddress")}
    ]  # fmt: skip


def fixed_addresses(nic: dict) -> list[str]:
    """The private addresses an interface asks for by address."""
    fixed = [nic.get("PrivateIpAddress")]
    fixed += [a["PrivateIpAddress"] for a in nic.get("PrivateIpAddresses", [])]
    return [a for a in fixed if a]


def found(ask: Any, gone: set[str], **kwargs: Any) -> bool:
    """Whether a describe of one named resource finds it: False on its not-found codes."""
    try:
        ask(**kwargs)
    except ClientError as err:
        if err.response["Error"]["Code"] not in gone:
            raise
        return False
    return True


def check_before_launch(clients: Clients, plan: Plan, facts: Facts) -> None:
    """Check cheaply what EC2 would refuse or get wrong; raise RestoreError if so, and warn
    (dropping it from the plan) about what was recorded but can no longer be reproduced."""
    params = plan.params
    nics = launch_interfaces(params)
    missing = sorted({n["SubnetId"] for n in nics} - set(facts.subnets))
    if missing:
        raise RestoreError(f"subnet{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           "does not exist")  # fmt: skip
    check_groups(nics, facts)
    if params.get("KeyName") and params["KeyName"] not in facts.key_pairs:
        raise RestoreError(f"key pair {params['KeyName']} does not exist")
    check_architecture(plan, facts)
    for nic in nics:
        for address in fixed_addresses(nic):
            check_address_free(address, facts.subnets[nic["SubnetId"]], facts)
    check_instance_profile(clients, params.get("IamInstanceProfile"), facts)
    check_placement(clients.ec2, plan, facts)
    check_target_groups(clients, plan, facts)
    check_classic_load_balancers(clients, plan, facts)
    for eip in plan.elastic_ips:
        address = facts.addresses.get(eip["allocation"])
        if address is None:
            raise RestoreError(f"Elastic IP allocation {eip['allocation']} does not exist; set "
                               "ELASTIC_IP = None to restore without it")  # fmt: skip
        plan.holders[eip["allocation"]] = address_holder(address)
    plan.eip_holder = plan.holders.get(plan.elastic_ip or "")


def check_groups(nics: list[dict], facts: Facts) -> None:
    """Every security group exists, in its interface's subnet's VPC."""
    wanted = sorted({g for n in nics for g in n.get("Groups", [])})
    missing = [g for g in wanted if g not in facts.groups]
    if missing:
        raise RestoreError(f"security group(s) {', '.join(missing)} does not exist")
    for nic in nics:
        subnet = facts.subnets[nic["SubnetId"]]
        for group in nic.get("Groups", []):
            vpc = facts.groups[group].get("VpcId")
            if vpc != subnet["VpcId"]:
                raise RestoreError(
                    f"security group {group} is in {vpc}, but subnet "
                    f"{subnet['SubnetId']} is in {subnet['VpcId']}; set SUBNET_ID and "
                    "SECURITY_GROUP_IDS (or NETWORK_INTERFACES)"
                )


def check_instance_profile(clients: Clients, profile: dict | None, facts: Facts) -> None:
    """The instance profile still exists: EC2 would refuse the launch after the fact."""
    if not profile:
        return
    name = (profile.get("Name") or profile.get("Arn", "")).rsplit("/", 1)[-1]
    ask, gone = clients.iam.get_instance_profile, {ERR_NO_SUCH_ENTITY}
    if not facts.once(("instance profile", name), found, ask, gone, InstanceProfileName=name):
        raise RestoreError(
            f"instance profile {name} does not exist (deleted since the backup?); create it, "
            "or set IAM_INSTANCE_PROFILE to one that does"
        )


def check_placement(ec2: Any, plan: Plan, facts: Facts) -> None:
    """A recorded placement group or dedicated host that is gone is left out, with a warning."""
    placement = plan.params.get("Placement", {})
    group, host = placement.get("GroupName"), placement.get("HostId")

    def host_usable() -> bool:
        try:
            hosts = ec2.describe_hosts(HostIds=[host]).get("Hosts", [])
        except ClientError as err:
            if err.response["Error"]["Code"] not in HOST_GONE_CODES:
                raise
            hosts = []
        return bool(hosts) and hosts[0].get("State") in HOST_USABLE_STATES

    ask, gone = ec2.describe_placement_groups, PLACEMENT_GONE_CODES
    if group and not facts.once(("placement group", group), found, ask, gone, GroupNames=[group]):
        warning = (f"placement group {group} no longer exists: the instance launches outside "
                   "any placement group; create it, or set PLACEMENT_GROUP")  # fmt: skip
        names, keys = ["placement group", "partition"], ["GroupName", "PartitionNumber"]
        unreproducible(plan, names, keys, warning)
    if host and not facts.once(("host", host), host_usable):
        unreproducible(plan, ["host", "affinity"], ["HostId", "Affinity"],
                       f"dedicated host {host} is gone or not available: the instance "
                       "launches on any host of its tenancy; set HOST_ID")  # fmt: skip


def unreproducible(plan: Plan, names: list[str], keys: list[str], warning: str) -> None:
    """Leave placement keys out of every launch, and say so."""
    plan.warnings.append(warning)
    for params in [plan.params, *plan.others]:
        for key in keys:
            params.get("Placement", {}).pop(key, None)
    mark_attributes(plan.attributes, names)


def check_target_groups(clients: Clients, plan: Plan, facts: Facts) -> None:
    """Target groups in another account or region, or gone, are left out with a warning."""
    account, region = plan.image.get("OwnerId"), clients.ec2.meta.region_name
    usable = []
    for group in plan.target_groups:
        parts = group["arn"].split(":")
        if len(parts) < 6 or parts[3] != region or (account and parts[4] != account):
            drop_target(plan, group, f"is not in this account and region ({region})")
            continue
        ask, gone = clients.elbv2.describe_target_groups, {ERR_TARGET_GROUP_NOT_FOUND}
        arn = group["arn"]
        if not facts.once(("target group", arn), found, ask, gone, TargetGroupArns=[arn]):
            drop_target(plan, group, "no longer exists")
            continue
        usable.append(group)
    plan.target_groups = usable


def check_classic_load_balancers(clients: Clients, plan: Plan, facts: Facts) -> None:
    """Classic Load Balancers that are gone are left out, with a warning."""
    usable = []
    for name in plan.classic_load_balancers:
        ask, gone = clients.elb.describe_load_balancers, {ERR_LOAD_BALANCER_NOT_FOUND}
        if not facts.once(("classic load balancer", name), found, ask, gone,
                          LoadBalancerNames=[name]):  # fmt: skip
            plan.warnings.append(f"Classic Load Balancer {name} does not exist here: the "
                                 "instance is not registered with it")  # fmt: skip
            mark_attributes(plan.attributes, [f"Classic ELB {name}"])
            continue
        usable.append(name)
    plan.classic_load_balancers = usable


def drop_target(plan: Plan, group: dict, why: str) -> None:
    """A target group the new instance cannot join: warn, and mark it."""
    plan.warnings.append(f"target group {group['arn']} {why}: the instance is not registered in it")
    mark_attributes(plan.attributes, [f"target group {target_label(group)}"])


def check_architecture(plan: Plan, facts: Facts) -> None:
    """The instance type must exist and run the image's architecture."""
    instance_type = plan.params["InstanceType"]
    info = facts.types.get(instance_type)
    if info is None:
        raise RestoreError(f"instance type {instance_type} does not exist")
    supported = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    architecture = plan.image.get("Architecture")
    if architecture and supported and architecture not in supported:
        raise RestoreError(
            f"instance type {instance_type} runs {', '.join(supported)}, but image "
            f"{plan.image['ImageId']} is {architecture}; set INSTANCE_TYPE"
        )


def check_address_free(address: str, subnet: dict, facts: Facts) -> None:
    """A fixed private address must lie in the subnet and be unused."""
    if ipaddress.IPv4Address(address) not in ipaddress.IPv4Network(subnet["CidrBlock"]):
        raise RestoreError(
            f"private IP {address} is outside subnet {subnet['SubnetId']} ({subnet['CidrBlock']})"
        )
    for eni in facts.in_use.get(address, []):
        if eni.get("SubnetId") == subnet["SubnetId"]:
            holder = eni.get("Attachment", {}).get("InstanceId") or eni["NetworkInterfaceId"]
            raise RestoreError(f"private IP {address} is in use by {holder}; set PRIVATE_IP = None")


def address_holder(address: dict) -> str | None:
    """Who holds an Elastic IP (an instance or interface id), or None if it is free."""
    return address.get("InstanceId") or address.get("NetworkInterfaceId") or None


def settle_elastic_ip(
    ec2: Any, plan: Plan, config: dict, launched: list[str], allocation: str
) -> bool:
    """Whether to associate the allocation now; warn when another instance held it when
    checked before launch."""
    holder = plan.holders.get(allocation)
    if holder and (holder in launched or holder in launched_interfaces(ec2, launched)):
        return False  # a rerun with the same client token: already done
    if holder and not config["ALLOW_REASSOCIATION"]:
        warning = (
            f"Elastic IP {allocation} is held by {holder} and was not moved; "
            "set ALLOW_REASSOCIATION = True to move it"
        )
        plan.warnings.append(warning)
        log.warning("%s", warning)
        mark_attributes(plan.attributes, [f"Elastic IP {allocation}"])
        return False
    return True


def launched_interfaces(ec2: Any, ids: list[str]) -> set[str]:
    """The network interface ids of the launched instances."""
    instances = describe_launched(ec2, ids)
    return {n["NetworkInterfaceId"] for i in instances for n in i.get("NetworkInterfaces", [])}


# --- Do it ----------------------------------------------------------------------------------------


class LaunchError(Exception):
    """A failure after instances were launched."""


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


def pace(client: Any) -> None:
    """Make the EC2 client wait for a token of the right bucket before each paced call."""
    pacers: dict[str, Pacer] = {}
    for operation, (bucket, size, rate) in PACED_CALLS.items():
        pacer = pacers.setdefault(bucket, Pacer(size, rate))
        client.meta.events.register(f"before-call.ec2.{operation}", pacer.wait)


def run_restores(clients: Clients, config: dict, restores: list[Restore], run: Run) -> None:
    """Launch each planned server at RunInstances' pace and, between launches, poll all
    launched instances together: set each up as it reaches running, and check its twin
    once it reaches what WAIT asks. One server's failure never stops the others."""
    todo = [r for r in restores if r.plan and not r.problems]
    waiting: list[Restore] = []
    delay = POLL_FIRST_SECONDS
    next_poll = time.monotonic() + delay
    while todo or waiting:
        if todo:
            restore = todo.pop(0)
            start(clients, config, restore, run)  # waits for a RunInstances token first
            waiting += [restore] if restore.stage != "done" else []
            if not todo:  # the last launch: look again soon, whatever the backoff
                delay, next_poll = POLL_FIRST_SECONDS, time.monotonic() + POLL_FIRST_SECONDS
        if waiting and time.monotonic() >= next_poll:
            advance(clients, config, waiting, run)
            waiting = [r for r in waiting if r.stage != "done"]
            next_poll = time.monotonic() + delay
            delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)
        if waiting and not todo:
            time.sleep(max(0.0, next_poll - time.monotonic()))


def start(clients: Clients, config: dict, restore: Restore, run: Run) -> None:
    """RunInstances for each instance of the server's plan (one call each, so each has its
    own Name), then decide which Elastic IPs to associate once it runs."""
    ec2, plan = clients.ec2, restore.plan
    try:
        if plan.image["State"] == DISABLED:
            ec2.enable_image(ImageId=plan.image["ImageId"])
            log.info("enabled %s, which was disabled, to launch from it", plan.image["ImageId"])
        for params in [plan.params, *plan.others]:
            response = ec2.run_instances(**params)
            restore.ids += [i["InstanceId"] for i in response["Instances"]]
    except (ClientError, BotoCoreError) as err:
        if not restore.ids:
            restore.fail(f"AWS error: {error_text(err)}")
            return
        restore.problems.append(f"launching the rest failed: {error_text(err)}")
    restore.at["run_instances_accepted"] = run.since()
    restore.deadline = time.monotonic() + config["WAIT_TIMEOUT_MINUTES"] * 60
    log.info("%slaunched %s from %s (client token %s)", run.prefix(restore),
             ", ".join(restore.ids), plan.image["ImageId"], plan.params["ClientToken"])  # fmt: skip
    with failing(restore):
        restore.allocations = [e for e in plan.elastic_ips if settle_elastic_ip(
            ec2, plan, config, restore.ids, e["allocation"])]  # fmt: skip
    after = bool(restore.allocations or plan.source_dest_off or plan.target_groups
                 or plan.dns_records or plan.classic_load_balancers)  # fmt: skip
    if restore.stage != "done":
        restore.stage = "launched" if after or config["WAIT"] != "none" else "done"


@contextlib.contextmanager
def failing(restore: Restore) -> Iterator[None]:
    """A failure after launch is this server's alone: record it, and the others go on."""
    try:
        yield
    except (ClientError, BotoCoreError, LaunchError) as err:
        restore.fail(str(err) if isinstance(err, LaunchError) else error_text(err))


def advance(clients: Clients, config: dict, waiting: list[Restore], run: Run) -> None:
    """One poll of the whole fleet: one DescribeInstances for the instances not yet
    running, one DescribeInstanceStatus for those running (100 a call); then set up what
    just started running, and check the twins of what just got where WAIT asks."""
    ec2 = clients.ec2
    launched = [r for r in waiting if r.stage == "launched"]
    if launched:
        found = {i["InstanceId"]: i for i in describe_launched(ec2, ids_of(launched))}
        for restore in launched:
            with failing(restore):
                if not running([found.get(i) for i in restore.ids]):
                    continue
                restore.at["running"] = run.since()
                set_up(clients, restore.plan, config, restore.ids, restore.allocations, found)
                stages = {"none": "done", "running": "ok", "status-ok": "running"}
                restore.stage = stages[config["WAIT"]]
    started = [r for r in waiting if r.stage == "running"]
    if started:
        ok = statuses_ok(ec2, ids_of(started))
        for restore in started:
            if set(restore.ids) <= ok:
                restore.at["status_ok"], restore.stage = run.since(), "ok"
    ready = [r for r in waiting if r.stage == "ok"]
    if ready:
        check_twins(clients, ready)
        for restore in ready:
            if restore.stage == "ok":
                restore.stage = "checking" if drill_check(config, restore) else "done"
    if config["DRILL"]:
        advance_checks(clients, config, [r for r in waiting if r.stage == "checking"], run)
    timeout = "DRILL_TIMEOUT_MINUTES" if config["DRILL"] else "WAIT_TIMEOUT_MINUTES"
    for restore in waiting:
        if restore.stage == "done" or time.monotonic() < restore.deadline:
            continue
        if restore.stage == "checking" and "command_id" not in restore.check:
            restore.fail(f"SSM never had {restore.ids[0]} online before {timeout} ran out, so "
                         f"DRILL_CHECK could not run: it needs {SSM_NEEDS}")  # fmt: skip
            continue
        what = {"launched": "running", "running": "status checks ok",
                "checking": "through DRILL_CHECK"}.get(restore.stage, "done")  # fmt: skip
        restore.fail(f"instances not {what} before {timeout} ran out")


def ids_of(restores: list[Restore]) -> list[str]:
    """The instance ids of several servers."""
    return [i for r in restores for i in r.ids]


def running(instances: list[dict | None]) -> bool:
    """Whether every instance is running (one not yet visible is not); an instance that
    died raises LaunchError."""
    for instance in filter(None, instances):
        state = instance["State"]["Name"]
        if state not in (PENDING, RUNNING):
            reason = instance.get("StateReason", {}).get("Message", "no reason given")
            raise LaunchError(f"instance {instance['InstanceId']} is {state}: {reason}")
    return all(i and i["State"]["Name"] == RUNNING for i in instances)


def statuses_ok(ec2: Any, ids: list[str]) -> set[str]:
    """The instances that pass their instance and system status checks (100 ids a call)."""
    ok = set()
    for start in range(0, len(ids), STATUS_IDS_MAX):
        batch = ids[start : start + STATUS_IDS_MAX]
        statuses = ec2.describe_instance_status(InstanceIds=batch, IncludeAllInstances=True)
        ok |= {
            s["InstanceId"]
            for s in statuses.get("InstanceStatuses", [])
            if s.get("InstanceStatus", {}).get("Status") == STATUS_OK
            and s.get("SystemStatus", {}).get("Status") == STATUS_OK
        }
    return ok


def set_up(
    clients: Clients, plan: Plan, config: dict, ids: list[str], allocations: list[dict],
    instances: dict[str, dict],
) -> None:  # fmt: skip
    """What RunInstances cannot do, once the instances run: source/dest check, Elastic IPs
    on their addresses, load balancers, DNS."""
    ec2 = clients.ec2
    for instance_id in ids:
        for index in plan.source_dest_off:
            nic = interface_at(instances[instance_id], index)
            ec2.modify_network_interface_attribute(
                NetworkInterfaceId=nic["NetworkInterfaceId"], SourceDestCheck={"Value": False}
            )
    first = instances[ids[0]]
    for eip in allocations:
        associate(ec2, eip, first, config)
    register(clients, plan, config, ids[0])
    if plan.dns_records:  # after the Elastic IP: the public address may be new
        point_dns(clients, plan.dns_records, describe_launched(ec2, ids[:1])[0])


def interface_at(instance: dict, index: int) -> dict:
    """The instance's network interface at a device index."""
    for nic in instance.get("NetworkInterfaces", []):
        if int(nic.get("Attachment", {}).get("DeviceIndex", -1)) == index:
            return nic
    raise LaunchError(f"instance {instance['InstanceId']} has no network interface {index}")


def address_slots(nic: dict) -> list[str]:
    """An interface's private addresses: the primary, then the secondary ones in address
    order (the order the backup records them in)."""
    addresses = nic.get("PrivateIpAddresses", [])
    primary = [a["PrivateIpAddress"] for a in addresses if a.get("Primary")]
    secondary = [a["PrivateIpAddress"] for a in addresses if not a.get("Primary")]
    return primary + sorted(secondary, key=ipaddress.IPv4Address)


def associate(ec2: Any, eip: dict, instance: dict, config: dict) -> None:
    """Associate an Elastic IP with its interface and address slot on the new instance."""
    nic = interface_at(instance, eip["index"])
    addresses = address_slots(nic)
    if eip["slot"] >= len(addresses):
        raise LaunchError(f"interface {eip['index']} of {instance['InstanceId']} has no address "
                          f"for Elastic IP {eip['allocation']}")  # fmt: skip
    address = addresses[eip["slot"]]
    ec2.associate_address(
        AllocationId=eip["allocation"], NetworkInterfaceId=nic["NetworkInterfaceId"],
        PrivateIpAddress=address, AllowReassociation=config["ALLOW_REASSOCIATION"],
    )  # fmt: skip
    log.info("associated Elastic IP %s with %s (%s)", eip["allocation"], instance["InstanceId"],
             address)  # fmt: skip


def register(clients: Clients, plan: Plan, config: dict, instance_id: str) -> None:
    """Register the new instance in its target groups and Classic Load Balancers; skip
    (with a warning) a target group where the original is still registered and healthy."""
    original = plan.recorded.instance_id
    for group in plan.target_groups:
        target = {"Id": instance_id, **({"Port": group["port"]} if group.get("port") else {})}
        if original and not config["ALLOW_REASSOCIATION"]:
            held = {**target, "Id": original}
            health = clients.elbv2.describe_target_health(
                TargetGroupArn=group["arn"], Targets=[held]
            ).get("TargetHealthDescriptions", [])
            if any(h.get("TargetHealth", {}).get("State") == "healthy" for h in health):
                warning = (
                    f"target group {target_label(group)}: the original {original} is still "
                    "registered and healthy, so the new instance was not registered; set "
                    "ALLOW_REASSOCIATION = True to register it too"
                )
                plan.warnings.append(warning)
                log.warning("%s", warning)
                mark_attributes(plan.attributes, [f"target group {target_label(group)}"])
                continue
        clients.elbv2.register_targets(TargetGroupArn=group["arn"], Targets=[target])
        log.info("registered %s in target group %s", instance_id, target_label(group))
    for name in plan.classic_load_balancers:
        clients.elb.register_instances_with_load_balancer(
            LoadBalancerName=name, Instances=[{"InstanceId": instance_id}]
        )
        log.info("registered %s with Classic Load Balancer %s", instance_id, name)


def mark_attributes(attributes: list[Attribute], names: list[str]) -> None:
    """Attributes that cannot be reproduced (a warning says why): shown so, not checked."""
    for attribute in attributes:
        if attribute.name in names:
            attribute.origin = UNAVAILABLE


def point_dns(clients: Clients, records: list[dict], instance: dict) -> None:
    """UPSERT each DNS_RECORDS entry with the new instance's address, keeping its TTL."""
    for record in records:
        key = "PrivateIpAddress" if record["value"] == "private" else "PublicIpAddress"
        address = instance.get(key)
        if not address:
            raise LaunchError(f"DNS record {record['name']}: the new instance has no "
                              f"{record['value']} address")  # fmt: skip
        listed = clients.route53.list_resource_record_sets(
            HostedZoneId=record["zone_id"], StartRecordName=record["name"],
            StartRecordType=record["type"], MaxItems="1",
        ).get("ResourceRecordSets", [])  # fmt: skip
        name = record["name"].rstrip(".") + "."
        same = [r for r in listed if r["Name"] == name and r["Type"] == record["type"]]
        ttl = same[0].get("TTL", DNS_TTL_DEFAULT) if same else DNS_TTL_DEFAULT
        change = {"Action": "UPSERT", "ResourceRecordSet": {
            "Name": name, "Type": record["type"], "TTL": ttl,
            "ResourceRecords": [{"Value": address}]}}  # fmt: skip
        clients.route53.change_resource_record_sets(
            HostedZoneId=record["zone_id"], ChangeBatch={"Changes": [change]}
        )
        log.info("DNS %s %s -> %s (TTL %s)", name, record["type"], address, ttl)


def describe_launched(ec2: Any, ids: list[str]) -> list[dict]:
    """The launched instances as they are now (new ids may not be visible at once)."""
    found = []
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        filters = [{"Name": "instance-id", "Values": ids[start : start + FILTER_VALUES_MAX]}]
        reservations = ec2.describe_instances(Filters=filters).get("Reservations", [])
        found += [i for r in reservations for i in r["Instances"]]
    return found


# --- Check the twin -------------------------------------------------------------------------------


def check_twins(clients: Clients, restores: list[Restore]) -> None:
    """Read each server's first new instance back and compare it with its plan: one
    DescribeInstances and one DescribeAddresses for them all, then each instance's
    GetLaunchTemplateData (EC2 has no batch form) and load balancers."""
    ec2 = clients.ec2
    ids = [r.ids[0] for r in restores]
    instances = {i["InstanceId"]: i for i in describe_launched(ec2, ids)}
    held: dict[str, list[dict]] = {}
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        filters = [{"Name": "instance-id", "Values": ids[start : start + FILTER_VALUES_MAX]}]
        for address in ec2.describe_addresses(Filters=filters).get("Addresses", []):
            held.setdefault(address.get("InstanceId", ""), []).append(address)
    for restore in restores:
        with failing(restore):
            instance = instances.get(restore.ids[0])
            if instance is None:
                raise LaunchError(f"instance {restore.ids[0]} is no longer described")
            restore.differences = check_twin(
                clients, restore.plan, instance, held.get(restore.ids[0], [])
            )
            for difference in restore.differences:
                log.warning("%s", difference)


def check_twin(clients: Clients, plan: Plan, instance: dict, held: list[dict]) -> list[str]:
    """Compare each attribute of the new instance with the plan; return one warning per
    difference, naming the attribute and both values."""
    instance_id = instance["InstanceId"]
    now = read_back(clients, plan, instance, held)
    differences = []
    for attribute in plan.attributes:
        if attribute.origin == UNAVAILABLE or attribute.name not in now:
            continue
        attribute.now, attribute.checked = now[attribute.name], True
        if attribute.planned is None and attribute.name in EC2_CHOOSES:
            continue
        if normal(attribute.now) != normal(attribute.planned):
            differences.append(
                f"{instance_id}: {attribute.name} is {shown(attribute.now)}, but the restore "
                f"asked for {shown(attribute.planned)} ({attribute.origin}; recorded: "
                f"{shown(attribute.recorded)})"
            )
    return differences


EC2_CHOOSES = {"CPU options", "CPU credits", "partition", "affinity", "host",
               "host resource group"}  # None planned: EC2 picks, nothing to compare  # fmt: skip


def normal(value: Any) -> Any:
    """Values compared as EC2 reports them: "" and None alike."""
    return None if value in ("", None) else value


def shown(value: Any) -> str:
    """An attribute value for a person."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def read_back(clients: Clients, plan: Plan, instance: dict, held: list[dict]) -> dict[str, Any]:
    """Every attribute of the new instance, by the plan's attribute names; held: the
    Elastic IPs it holds."""
    ec2, instance_id = clients.ec2, instance["InstanceId"]
    placement, meta = instance.get("Placement", {}), instance.get("MetadataOptions", {})
    dns, cpu = instance.get("PrivateDnsNameOptions", {}), instance.get("CpuOptions", {})
    values: dict[str, Any] = {
        "tenancy": placement.get("Tenancy"),
        "placement group": placement.get("GroupName") or None,
        "partition": placement.get("PartitionNumber"),
        "host": placement.get("HostId"),
        "host resource group": placement.get("HostResourceGroupArn"),
        "affinity": placement.get("Affinity"),
        "CPU options": {k: cpu[k] for k in ("CoreCount", "ThreadsPerCore") if k in cpu} or None,
        "EBS-optimized": bool(instance.get("EbsOptimized")),
        "hibernation": bool(instance.get("HibernationOptions", {}).get("Configured")),
        "Nitro Enclaves": bool(instance.get("EnclaveOptions", {}).get("Enabled")),
        "capacity reservation": instance.get("CapacityReservationSpecification", {}).get(
            "CapacityReservationPreference", "open"),
        **{name: meta.get(key) for key, name in METADATA_KEYS.items()},
        **{name: dns.get(key) for key, name in DNS_NAME_KEYS.items()},
        "detailed monitoring": instance.get("Monitoring", {}).get("State") in MONITORING_ON,
        "auto-recovery": instance.get("MaintenanceOptions", {}).get("AutoRecovery"),
    }  # fmt: skip
    data = ec2.get_launch_template_data(InstanceId=instance_id)["LaunchTemplateData"]
    values.update({name: data.get(key) for key, name in LAUNCH_DATA_KEYS.items()})
    if BURSTABLE_RE.match(instance.get("InstanceType", "")):
        values["CPU credits"] = data.get("CreditSpecification", {}).get("CpuCredits")
    values.update(interfaces_now(instance))
    values.update(addresses_now(plan, instance, held))
    values.update(balancers_now(clients, plan, instance_id))
    return values


def interfaces_now(instance: dict) -> dict[str, Any]:
    """The per-interface attributes of the new instance."""
    nics = sorted(
        instance.get("NetworkInterfaces", []), key=lambda n: n["Attachment"]["DeviceIndex"]
    )
    values: dict[str, Any] = {"network interfaces": len(nics)}
    for nic in nics:
        label = f"interface {nic['Attachment']['DeviceIndex']}"
        addresses = nic.get("PrivateIpAddresses", [])
        values.update({
            f"{label} subnet": nic.get("SubnetId"),
            f"{label} security groups": sorted(g["GroupId"] for g in nic.get("Groups", [])),
            f"{label} secondary IPs": len([a for a in addresses if not a.get("Primary")]),
            f"{label} IPv6 addresses": len(nic.get("Ipv6Addresses", [])),
            f"{label} source/dest check": nic.get("SourceDestCheck", True),
            f"{label} description": nic.get("Description", ""),
            f"{label} delete on termination": nic["Attachment"].get("DeleteOnTermination"),
            f"{label} private IP": nic.get("PrivateIpAddress"),
        })  # fmt: skip
    return values


def addresses_now(plan: Plan, instance: dict, held: list[dict]) -> dict[str, Any]:
    """Where each planned Elastic IP sits now, and whether the instance has a public IP
    of its own (not an Elastic IP)."""
    values: dict[str, Any] = {}
    elastic = {a.get("PublicIp") for a in held}
    public = [
        n.get("Association", {}).get("PublicIp") for n in instance.get("NetworkInterfaces", [])
    ]
    values["public IP"] = any(ip and ip not in elastic for ip in public)
    if plan.elastic_ips and any(e["index"] == 0 and e["slot"] == 0 for e in plan.elastic_ips):
        values.pop("public IP")  # an Elastic IP on the primary address replaces a launch one
    by_allocation = {a.get("AllocationId"): a for a in held}
    for eip in plan.elastic_ips:
        address = by_allocation.get(eip["allocation"])
        where = None
        if address:
            nic = next(n for n in instance["NetworkInterfaces"]
                       if n["NetworkInterfaceId"] == address.get("NetworkInterfaceId"))  # fmt: skip
            slot = address_slots(nic).index(address["PrivateIpAddress"])
            where = address_slot({"index": nic["Attachment"]["DeviceIndex"], "slot": slot})
        values[f"Elastic IP {eip['allocation']}"] = where
    return values


def balancers_now(clients: Clients, plan: Plan, instance_id: str) -> dict[str, Any]:
    """Whether the new instance is registered in each planned load balancer."""
    values: dict[str, Any] = {}
    for group in plan.target_groups:
        target = {"Id": instance_id, **({"Port": group["port"]} if group.get("port") else {})}
        health = clients.elbv2.describe_target_health(
            TargetGroupArn=group["arn"], Targets=[target]
        ).get("TargetHealthDescriptions", [])
        states = {h.get("TargetHealth", {}).get("State") for h in health}
        values[f"target group {target_label(group)}"] = (
            "registered" if states - {None, "unused"} else None
        )
    if plan.classic_load_balancers:
        described = clients.elb.describe_load_balancers(
            LoadBalancerNames=plan.classic_load_balancers
        ).get("LoadBalancerDescriptions", [])
        for balancer in described:
            members = {i["InstanceId"] for i in balancer.get("Instances", [])}
            values[f"Classic ELB {balancer['LoadBalancerName']}"] = (
                "registered" if instance_id in members else None
            )
    return values


# --- Report --------------------------------------------------------------------------------


def report(ec2: Any, restores: list[Restore], config: dict, as_json: bool, run: Run) -> None:
    """Print what was launched, as tables or JSON: a single restore's instances and twin
    check, or a fleet's table with each server's timings. Log each failure last."""
    rows = {i["instance_id"]: i for i in instance_rows(ec2, ids_of(restores))}
    if not config["FLEET"]:
        [restore] = restores
        print_report(restore, [rows[i] for i in restore.ids], as_json, run)
    elif as_json:
        print(json.dumps(fleet_document(restores, rows, run), indent=2))
    else:
        print_fleet(restores, rows, run, config["DRILL"])
    for restore in restores:
        if restore.error:
            log.error("%s%s", run.prefix(restore), restore.error)


def instance_rows(ec2: Any, ids: list[str]) -> list[dict]:
    """One row per launched instance: id, state, addresses, zone and Name."""
    found = {i["InstanceId"]: i for i in describe_launched(ec2, ids)}
    rows = []
    for instance_id in ids:
        instance = found.get(instance_id, {})
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        rows.append(
            {
                "instance_id": instance_id,
                "state": instance.get("State", {}).get("Name", "unknown"),
                "private_ip": instance.get("PrivateIpAddress", ""),
                "public_ip": instance.get("PublicIpAddress", ""),
                "availability_zone": instance.get("Placement", {}).get("AvailabilityZone", ""),
                "name": tags.get("Name", ""),
            }
        )
    return rows


def restore_document(restore: Restore, rows: list[dict], run: Run) -> dict[str, Any]:
    """One server's restore for --json: its backup and the RPO it achieved, instances,
    timings (seconds into the run), twin check, warnings and error."""
    plan, image = restore.plan, restore.image or {}
    backup = backup_time(image) if image else None
    return {
        "server": restore.server,
        "image_id": image.get("ImageId"),
        "backup_time": f"{backup:%Y-%m-%dT%H:%M:%SZ}" if backup else None,
        "backup_age_seconds": round((run.utc - backup).total_seconds()) if backup else None,
        "client_token": plan.params["ClientToken"] if plan else None,
        "instances": rows,
        "timings": restore.at,
        "attributes": [attribute_json(a) for a in plan.attributes] if plan else [],
        "differences": restore.differences,
        "warnings": plan.warnings if plan else [],
        **({"check": restore.check} if restore.check else {}),
        "error": restore.error,
    }


def fleet_document(restores: list[Restore], rows: dict[str, dict], run: Run) -> dict[str, Any]:
    """A fleet's restore for --json."""
    return {
        "started": f"{run.utc:%Y-%m-%dT%H:%M:%SZ}",
        "wall_seconds": run.since(),
        "client_token": run.token,
        "servers": [restore_document(r, [rows[i] for i in r.ids], run) for r in restores],
        "failed": [r.server for r in restores if r.error],
    }


def print_report(restore: Restore, rows: list[dict], as_json: bool, run: Run) -> None:
    """Print a single restore's instances and twin check, as tables or as JSON."""
    if as_json:
        print(json.dumps(restore_document(restore, rows, run), indent=2))
        return
    plan = restore.plan
    header = {"instance_id": "INSTANCE", "state": "STATE", "private_ip": "PRIVATE IP",
              "public_ip": "PUBLIC IP", "availability_zone": "ZONE", "name": "NAME"}  # fmt: skip
    print_table([header, *rows], list(header))
    checked = [a for a in plan.attributes if a.checked]
    if checked:
        print()
        print(f"The twin, read back from {rows[0]['instance_id']}:")
        columns = ["attribute", "recorded", "now", "origin", "check"]
        table = [{c: c.upper() for c in columns}]
        for a in plan.attributes:
            check = ("ok" if same(a) else "DIFFERS") if a.checked else ""
            now = shown(a.now) if a.checked else "(not checked)"
            table.append({"attribute": a.name, "recorded": shown(a.recorded), "now": now,
                          "origin": a.origin, "check": check})  # fmt: skip
        print_table(table, columns)
        differences = restore.differences
        verdict = f"{len(differences)} difference(s)" if differences else "no difference"
        print(f"{verdict} in {len(checked)} attributes checked")
    if restore.at.get("run_instances_accepted") is not None:
        print(f"timings (s into the run): {timings_text(restore)}")
    print(f"client token: {plan.params['ClientToken']} (rerun with --client-token to retry safely)")


TIMINGS = [("image_resolved", "resolved"), ("run_instances_accepted", "accepted"),
           ("running", "running"), ("status_ok", "status-ok"),
           ("check_passed", "checked")]  # fmt: skip


def timings_text(restore: Restore) -> str:
    """A server's timings in words."""
    return ", ".join(f"{label} {restore.at[key]:.1f}" for key, label in TIMINGS
                     if key in restore.at)  # fmt: skip


def print_fleet(restores: list[Restore], rows: dict[str, dict], run: Run, drill: bool) -> None:
    """A fleet's table: per server its backup and age (the RPO achieved), instance, the
    seconds into the run at each step, the twin check and the result."""
    columns = ["server", "image", "backup age", "instance", "state",
               *(label for _, label in TIMINGS), "twin", "result"]  # fmt: skip
    table = [{c: c.upper() for c in columns}]
    for restore in restores:
        image = restore.image or {}
        first = rows.get(restore.ids[0], {}) if restore.ids else {}
        age = (run.utc - backup_time(image)).total_seconds() if image else None
        checked = [a for a in restore.plan.attributes if a.checked] if restore.plan else []
        twin = f"{len(restore.differences)} diff" if checked else "-"
        row = {"server": restore.server, "image": image.get("ImageId", "-"),
               "backup age": duration(age), "instance": first.get("instance_id", "-"),
               "state": first.get("state", "-"), "twin": twin,
               "result": "FAILED" if restore.error else "ok"}  # fmt: skip
        row.update({label: f"{restore.at[key]:.1f}" if key in restore.at else "-"
                    for key, label in TIMINGS})  # fmt: skip
        table.append(row)
    print_table(table, columns)
    failed = [r.server for r in restores if r.error]
    done = "verified by a drill (and terminated)" if drill else "restored"
    summary = f"{len(restores) - len(failed)} of {len(restores)} servers {done} in "
    print(summary + f"{run.since():.1f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if not drill:
        print(f"client token: {run.token} (rerun with --client-token to retry safely)")


def duration(seconds: float | None) -> str:
    """A backup's age for a person: 42m, 5h07m, 3d04h."""
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def same(attribute: Attribute) -> bool:
    """Whether a checked attribute came out as planned."""
    if attribute.planned is None and attribute.name in EC2_CHOOSES:
        return True
    return normal(attribute.now) == normal(attribute.planned)


def attribute_json(attribute: Attribute) -> dict[str, Any]:
    """One attribute for --json."""
    made = {"name": attribute.name, "recorded": attribute.recorded,
            "planned": attribute.planned, "origin": attribute.origin}  # fmt: skip
    if attribute.checked:
        made.update(now=attribute.now, same=same(attribute))
    return made


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as aligned columns."""
    widths = {c: max(len(str(row.get(c, ""))) for row in rows) for c in columns}
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def describe_plan(plan: Plan, config: dict) -> list[str]:
    """The plan in words, for --dry-run; user data is counted, never shown."""
    p, r = plan.params, plan.recorded
    volumes = ", ".join(
        f"{k}={v}" for k, v in (p.get("BlockDeviceMappings") or [{}])[0].get("Ebs", {}).items()
    )
    tags = ", ".join(f"{t['Key']}={t['Value']}" for t in p["TagSpecifications"][0]["Tags"])
    user_data = p.get("UserData")
    shown_data = f"{len(user_data)} bytes (not shown)" if user_data else "none"
    first = (p.get("NetworkInterfaces") or [{}])[0]
    subnet = p.get("SubnetId") or first.get("SubnetId")
    groups = p.get("SecurityGroupIds") or first.get("Groups") or []
    address = p.get("PrivateIpAddress") or first.get("PrivateIpAddress") or next(
        (a["PrivateIpAddress"] for a in first.get("PrivateIpAddresses", []) if a["Primary"]),
        "a new address")  # fmt: skip
    eip = plan.elastic_ip or "none"
    if plan.eip_holder:
        moved = "moved" if config["ALLOW_REASSOCIATION"] else "left there (ALLOW_REASSOCIATION)"
        eip += f", now held by {plan.eip_holder}: would be {moved}"
    count = 1 + len(plan.others)
    names = f"{plan.name}" + (
        f", then {plan.name}-2 ... {plan.name}-{count}" if plan.others else ""
    )
    lines = [
        f"Would launch {count} x {p['InstanceType']} from {p['ImageId']} "
        f"(server {r.server or '-'}, backup {r.created or '-'}, schedule {r.schedule or '-'})",
        f"  name:                   {names}",
        f"  subnet:                 {subnet}",
        f"  security groups:        {', '.join(groups) or 'VPC default'}",
        f"  key pair:               {p.get('KeyName', 'none')}",
        f"  instance profile:       {profile_origin(p, config)}",
        f"  private IP:             {address}",
        f"  Elastic IP:             {eip}",
        f"  user data:              {shown_data}",
        f"  volumes:                {volumes or 'as the image has them'}",
        f"  tags:                   {tags}",
        f"  wait:                   {config['WAIT']}",
        f"  client token:           {p['ClientToken']}",
        "  attributes (recorded: as the original ran; overridden: by a setting; default: EC2's):",
    ]
    width = max(len(a.name) for a in plan.attributes)
    for a in plan.attributes:
        lines.append(f"    {a.name.ljust(width)}  {shown(a.planned):<24}  {a.origin}")
    for record in plan.dns_records:
        lines.append(f"  DNS: UPSERT {record['name']} {record['type']} -> the {record['value']} "
                     "address (TTL kept)")  # fmt: skip
    return lines


def profile_origin(params: dict, config: dict) -> str:
    """The instance profile, and whence it came: it grants the new instance a role."""
    profile = next(iter(params.get("IamInstanceProfile", {}).values()), None)
    if not profile:
        return "none"
    if config["IAM_INSTANCE_PROFILE"]:
        return f"{profile} (IAM_INSTANCE_PROFILE)"
    if config["ALLOWED_INSTANCE_PROFILES"] is None:
        return f"{profile} (from the image's tag; ALLOWED_INSTANCE_PROFILES is None: not checked)"
    return f"{profile} (from the image's tag; in ALLOWED_INSTANCE_PROFILES)"


def dry_run(ec2: Any, restores: list[Restore], config: dict) -> int:
    """Print each server's plan and let EC2 check it with DryRun=True; launch nothing.
    Exit 1 if any server could not be restored as planned."""
    for restore in restores:
        if config["FLEET"]:
            print(f"== {restore.server}")
        if restore.plan:
            with one_server(restore, config["FLEET"]):
                for line in describe_plan(restore.plan, config):
                    print(line)
                check_with_ec2(ec2, restore.plan)
        if restore.problems:
            print(f"Would not restore {restore.server}: {restore.error}")
    return EXIT_FAILED if any(r.problems for r in restores) else EXIT_OK


def check_with_ec2(ec2: Any, plan: Plan) -> None:
    """RunInstances with DryRun=True: EC2 checks permissions and parameters."""
    if plan.image["State"] == DISABLED:
        print(f"Would enable {plan.image['ImageId']} first: it is disabled, so EC2 cannot "
              "check this RunInstances request before that (DryRun skipped).")  # fmt: skip
        return
    params = {k: v for k, v in plan.params.items() if k != "ClientToken"}
    try:
        ec2.run_instances(DryRun=True, **params)
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DRY_RUN_OK:
            raise
    print("DryRun: EC2 accepts this RunInstances request (permissions and parameters).")


def list_backups(ec2: Any, config: dict, recycle_bin: bool = False) -> int:
    """Print the restorable backups of SERVER (or of every server), newest first; and
    with recycle_bin the images in the Recycle Bin, which `--ami` restores."""
    images = managed_images(ec2, config["SERVER"], config["SCHEDULE"])
    columns = ["server", "image", "created", "schedule", "state", "type", "subnet", "record",
               "verified"]  # fmt: skip
    rows: list[dict] = [{c: c.upper() for c in columns}]
    for image in sorted(images, key=lambda i: read_recorded(i).server or ""):
        r = read_recorded(image)
        rows.append({"server": r.server, "image": image["ImageId"], "created": r.created,
                     "schedule": r.schedule, "state": image["State"],
                     "type": r.instance_type, "subnet": r.subnet_id,
                     "record": r.completeness,
                     "verified": verified_summary(image_tag(image, TAG_VERIFIED))})  # fmt: skip
    print_table(rows, columns)
    if not images:
        print("(no backups)")
    if recycle_bin:
        print_recycle_bin(ec2)
    return EXIT_OK


def verified_summary(value: str | None) -> str:
    """A drill's TAG_VERIFIED value for a listing: when, and ok or failed ("-": never)."""
    if not value:
        return "-"
    when, _, rest = value.partition(" ")
    return f"{when.replace('T', ' ').rstrip('Z')[:16]} {rest.split(' ', 1)[0]}".strip()


def print_recycle_bin(ec2: Any) -> None:
    """The images in this region's Recycle Bin. EC2 lists them without tags, so every
    image is shown, by name; a backup's name carries its server (NAME_FORMAT)."""
    binned = list(paginate_bin(ec2))
    print()
    if not binned:
        print("(no images in the Recycle Bin)")
        return
    columns = ["image", "name", "deleted", "leaves the bin"]
    rows = [{c: c.upper() for c in columns}]
    for image in sorted(binned, key=lambda i: i.get("RecycleBinEnterTime"), reverse=True):
        rows.append({"image": image["ImageId"], "name": image.get("Name", ""),
                     "deleted": bin_time(image.get("RecycleBinEnterTime")),
                     "leaves the bin": bin_time(image.get("RecycleBinExitTime"))})  # fmt: skip
    print("In the Recycle Bin (restore one with --ami):")
    print_table(rows, columns)


def paginate_bin(ec2: Any, **kwargs: Any) -> Iterator[dict]:
    """ListImagesInRecycleBin, page by page."""
    for page in ec2.get_paginator("list_images_in_recycle_bin").paginate(**kwargs):
        yield from page.get("Images", [])


def bin_time(value: Any) -> str:
    """A Recycle Bin time, to the minute."""
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else str(value or "-")


# --- Drill: restore into isolation, check, record the result, always clean up ---------------


def drill(clients: Clients, config: dict, args: argparse.Namespace) -> int:
    """Restore each server into DRILL_SUBNET_ID, wait for status-ok, run DRILL_CHECK, and
    terminate its instance whatever happens (pass, fail, Ctrl-C, SIGTERM, an exception).
    Tag each image verified (ok or failed), append to DRILL_LOG, report. First, terminate
    what a drill killed by SIGKILL left behind. Exit 1 if any server failed."""
    run = Run(config["FLEET"])
    run.token = args.client_token or f"{TOOL}-{uuid.uuid4().hex}"
    config = drill_config(config, run)
    ec2 = clients.ec2
    leftovers = drill_leftovers(ec2, config, run)
    if args.dry_run:
        for instance in leftovers:
            print(f"Would terminate {instance['InstanceId']}, left by an earlier drill "
                  f"(launched {instance['LaunchTime']:%Y-%m-%d %H:%M} UTC)")  # fmt: skip
    elif leftovers:
        terminate(ec2, [i["InstanceId"] for i in leftovers], "left by an earlier drill")
    try:
        restores = prepare(clients, config, args, run)
    except (ClientError, BotoCoreError) as err:
        raise RestoreError(f"AWS error: {error_text(err)}") from None
    if args.dry_run:
        return dry_run(ec2, restores, config)
    interrupted = False
    try:
        with sigterm_interrupts():
            run_restores(clients, config, restores, run)
    except KeyboardInterrupt:
        interrupted = True
    finally:  # what this run launched, and what a RunInstances cut short launched unseen
        launched = sorted(set(ids_of(restores)) | set(launched_by(ec2, run)))
        if launched:
            terminate(ec2, launched, "the drill is over")
    if interrupted:
        log.error("drill interrupted: its instances were terminated; no image was tagged")
        return EXIT_FAILED
    recorded = record_drill(clients, config, restores, run)
    report(ec2, restores, config, args.json, run)
    return EXIT_FAILED if not recorded or any(r.error for r in restores) else EXIT_OK


def drill_config(config: dict, run: Run) -> dict:
    """The config a drill restores with: in DRILL_SUBNET_ID with DRILL_SECURITY_GROUP_IDS on
    new addresses, with no public IP, Elastic IP, load balancer or DNS record, removable
    (termination protection off), and waited on until status-ok within
    DRILL_TIMEOUT_MINUTES of its launch."""
    return {
        **config,
        "INSTANCE_TYPE": config["DRILL_INSTANCE_TYPE"] or config["INSTANCE_TYPE"],
        "NETWORK_INTERFACES": None, "SUBNET_ID": None, "SECURITY_GROUP_IDS": None,
        "PRIVATE_IP": None, "PUBLIC_IP": False, "ELASTIC_IP": None, "TARGET_GROUPS": [],
        "CLASSIC_LOAD_BALANCERS": [], "DNS_RECORDS": [], "NAME": None, "COUNT": 1,
        "TERMINATION_PROTECTION": False, "WAIT": "status-ok",
        "WAIT_TIMEOUT_MINUTES": config["DRILL_TIMEOUT_MINUTES"],
        "DRILL_STAMP": f"{run.utc:%Y%m%dT%H%M%SZ}", "DRILL_RUN": run.token,
    }  # fmt: skip


def drill_leftovers(ec2: Any, config: dict, run: Run) -> list[dict]:
    """Drill instances a killed drill left behind: tagged TAG_DRILL, in DRILL_SUBNET_ID, not
    terminated, launched more than DRILL_TIMEOUT_MINUTES x 2 ago. A drill that still runs
    is younger: each of its instances lives DRILL_TIMEOUT_MINUTES at most."""
    filters = [
        {"Name": "tag-key", "Values": [TAG_DRILL]},
        {"Name": "subnet-id", "Values": [config["DRILL_SUBNET_ID"]]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    cutoff = run.utc - timedelta(minutes=2 * config["DRILL_TIMEOUT_MINUTES"])
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        found += [i for r in page.get("Reservations", []) for i in r["Instances"]]
    return [i for i in found if i["LaunchTime"] < cutoff]


def launched_by(ec2: Any, run: Run) -> list[str]:
    """The live instances tagged with this drill run's id: those an interruption in the
    middle of RunInstances launched without the run seeing their ids. An instance EC2
    does not describe yet is left to the next drill's sweep."""
    filters = [
        {"Name": f"tag:{TAG_DRILL_RUN}", "Values": [run.token]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    try:
        pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
    except (ClientError, BotoCoreError) as err:
        log.error("could not look for this drill's instances: %s", error_text(err))
        return []


def terminate(ec2: Any, ids: list[str], why: str) -> None:
    """Terminate instances, FILTER_VALUES_MAX a call; a failure is logged with the ids (the
    next drill terminates them), and does not stop the rest."""
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        batch = ids[start : start + FILTER_VALUES_MAX]
        try:
            ec2.terminate_instances(InstanceIds=batch)
            log.info("terminated %s: %s", ", ".join(batch), why)
        except (ClientError, BotoCoreError) as err:
            log.error("could not terminate %s (%s): %s; the next drill will", ", ".join(batch),
                      why, error_text(err))  # fmt: skip


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (from kill, systemd or cron's timeout) interrupts like Ctrl-C, so the
    drill still terminates its instances."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def drill_check(config: dict, restore: Restore) -> str | None:
    """The DRILL_CHECK command for this server's platform, or None."""
    return (config["DRILL_CHECK"] or {}).get(restore.plan.recorded.platform or "linux")


def advance_checks(clients: Clients, config: dict, checking: list[Restore], run: Run) -> None:
    """DRILL_CHECK on each instance that passed its status checks: once SSM has it online
    (one DescribeInstanceInformation for them all), one SendCommand per platform, then one
    ListCommandInvocations per command for the results."""
    ssm = clients.ssm
    unsent = [r for r in checking if "command_id" not in r.check]
    try:
        online = ssm_online(ssm, [r.ids[0] for r in unsent]) if unsent else set()
    except (ClientError, BotoCoreError) as err:
        for restore in unsent:
            restore.fail(f"could not ask SSM about {restore.ids[0]}: {error_text(err)}")
        return
    groups: dict[tuple[str, str], list[Restore]] = {}
    for restore in unsent:
        if restore.ids[0] in online:
            platform = restore.plan.recorded.platform or "linux"
            key = (CHECK_DOCUMENTS[platform], drill_check(config, restore))
            groups.setdefault(key, []).append(restore)
    seconds = int(config["DRILL_TIMEOUT_MINUTES"] * 60)
    for (document, command), group in groups.items():
        for start in range(0, len(group), SSM_IDS_MAX):
            batch = group[start : start + SSM_IDS_MAX]
            try:
                command_id = ssm.send_command(
                    InstanceIds=[r.ids[0] for r in batch], DocumentName=document,
                    Parameters={"commands": [command], "executionTimeout": [str(seconds)]},
                    TimeoutSeconds=max(30, seconds), Comment=f"{TOOL} drill",
                )["Command"]["CommandId"]  # fmt: skip
            except (ClientError, BotoCoreError) as err:
                for restore in batch:
                    restore.fail(f"DRILL_CHECK could not be sent: {error_text(err)}")
                continue
            for restore in batch:
                restore.check = {"command_id": command_id, "document": document,
                                 "status": "Pending"}  # fmt: skip
    read_checks(ssm, [r for r in checking if "command_id" in r.check and r.stage != "done"], run)


def ssm_online(ssm: Any, ids: list[str]) -> set[str]:
    """The instances SSM reaches now (SSM_IDS_MAX a call)."""
    online = set()
    for start in range(0, len(ids), SSM_IDS_MAX):
        filters = [{"Key": "InstanceIds", "Values": ids[start : start + SSM_IDS_MAX]}]
        pages = ssm.get_paginator("describe_instance_information").paginate(
            Filters=filters, MaxResults=SSM_IDS_MAX
        )
        for page in pages:
            online |= {i["InstanceId"] for i in page.get("InstanceInformationList", [])
                       if i.get("PingStatus") == SSM_ONLINE}  # fmt: skip
    return online


def read_checks(ssm: Any, sent: list[Restore], run: Run) -> None:
    """Each sent check's status: success passes it; any other end fails it, with the
    command's exit code (never its output, which may hold secrets)."""
    by_command: dict[str, list[Restore]] = {}
    for restore in sent:
        by_command.setdefault(restore.check["command_id"], []).append(restore)
    for command_id, group in by_command.items():
        try:
            pages = ssm.get_paginator("list_command_invocations").paginate(
                CommandId=command_id, Details=True
            )
            invocations = {i["InstanceId"]: i for p in pages for i in p["CommandInvocations"]}
        except (ClientError, BotoCoreError) as err:
            for restore in group:
                restore.fail(f"could not read DRILL_CHECK's result: {error_text(err)}")
            continue
        for restore in group:
            invocation = invocations.get(restore.ids[0], {})
            status = restore.check["status"] = invocation.get("Status", "Pending")
            if status == SSM_SUCCESS:
                restore.at["check_passed"], restore.stage = run.since(), "done"
            elif status not in SSM_RUNNING:
                plugins = invocation.get("CommandPlugins") or [{}]
                code = plugins[0].get("ResponseCode")
                exit_code = f", exit code {code}" if code is not None else ""
                restore.fail(f"DRILL_CHECK {status} on {restore.ids[0]} (command "
                             f"{command_id}{exit_code})")  # fmt: skip


def record_drill(clients: Clients, config: dict, restores: list[Restore], run: Run) -> bool:
    """Tag each drilled image with TAG_VERIFIED, and append one JSON line per server to
    DRILL_LOG; False if DRILL_LOG could not be written (a failed tag fails its server)."""
    lines = []
    for restore in restores:
        ok = not restore.error
        if restore.image:  # a plan or check that failed is a failed restore too
            value = verified_value(restore, config, run)
            try:
                clients.ec2.create_tags(Resources=[restore.image["ImageId"]],
                                        Tags=[{"Key": TAG_VERIFIED, "Value": value}])  # fmt: skip
            except (ClientError, BotoCoreError) as err:
                restore.problems.append(f"could not tag {restore.image['ImageId']} "
                                        f"{TAG_VERIFIED}: {error_text(err)}")  # fmt: skip
        entry = restore_document(restore, [], run)
        kept = ("server", "image_id", "backup_time", "backup_age_seconds", "timings", "error")
        lines.append({
            "drill": f"{run.utc:%Y-%m-%dT%H:%M:%SZ}", "result": "ok" if ok else "failed",
            "instance_ids": restore.ids,
            "instance_type": restore.plan.params["InstanceType"] if restore.plan else None,
            **{k: entry[k] for k in kept},
        })  # fmt: skip
    if config["DRILL_LOG"]:
        try:
            with open(config["DRILL_LOG"], "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(line) + "\n" for line in lines)
        except OSError as err:
            log.error("could not append to DRILL_LOG %s: %s", config["DRILL_LOG"], err.strerror)
            return False
    return True


def verified_value(restore: Restore, config: dict, run: Run) -> str:
    """TAG_VERIFIED: "<UTC time> ok|failed status-ok=<s>s check=<s>s" (the seconds from
    RunInstances accepted; "-" for a step not reached, "none" when there is no check)."""
    accepted = restore.at.get("run_instances_accepted")

    def after(key: str) -> str:
        if accepted is None or key not in restore.at:
            return "-"
        return f"{restore.at[key] - accepted:.0f}s"

    checked = restore.plan is None or drill_check(config, restore)
    check = after("check_passed") if checked else "none"
    result = "failed" if restore.error else "ok"
    return f"{run.utc:%Y-%m-%dT%H:%M:%SZ} {result} status-ok={after('status_ok')} check={check}"


# --- IAM policy: the least privilege this config needs --------------------------------------


def print_iam_policy(config: dict) -> int:
    """--print-iam-policy: the policy this config's restores (with --drill: its drills)
    need, as JSON; no AWS call."""
    print(json.dumps(iam_policy(config), indent=2))
    return EXIT_OK


def iam_policy(config: dict) -> dict:
    """The least-privilege policy for restores (or, with --drill, drills) with this config,
    in its region and account.

    The instance profile a restore hands out comes from the image's tag, so PassRole is
    limited to roles under RESTORABLE_ROLE_PATH: create the roles a restore may pass
    there (ALLOWED_INSTANCE_PROFILES checks the profile too). The Elastic IP is the
    configured allocation, or one tagged RESTORE_OPT_IN_TAG = "allow". A drill launches
    only into DRILL_SUBNET_ID with DRILL_SECURITY_GROUP_IDS, terminates only instances
    tagged TAG_DRILL, tags images only with TAG_VERIFIED, and has no call that reaches
    production: no Elastic IP, load balancer, DNS, EnableImage or Recycle Bin.
    """
    region = base_session(config["PROFILE"], config["REGION"])[0].region_name
    account = config["ROLE_ARN"].split(":")[4] if config["ROLE_ARN"] else "*"
    arn = f"arn:aws:ec2:{region}:{account}:"
    image = f"arn:aws:ec2:{region}::image/*"
    launched = [arn + k for k in ("instance/*", "volume/*", "network-interface/*")]
    describe = [
        "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
        "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
        "ec2:DescribeKeyPairs", "ec2:DescribeAddresses", "ec2:DescribePlacementGroups",
        "ec2:DescribeHosts", *LAUNCH_DATA_DESCRIBES,
    ]  # fmt: skip
    if config["DRILL"]:
        sid, network = "LaunchOnlyIntoTheDrillSubnet", [
            arn + f"subnet/{config['DRILL_SUBNET_ID']}",
            *(arn + f"security-group/{g}" for g in config["DRILL_SECURITY_GROUP_IDS"]),
        ]  # fmt: skip
    else:
        describe += ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSnapshots",
                     "ec2:ListImagesInRecycleBin", "ec2:ListSnapshotsInRecycleBin"]  # fmt: skip
        subnet = f"subnet/{config['SUBNET_ID']}" if config["SUBNET_ID"] else "subnet/*"
        sid, network = "LaunchInTheConfigsRegion", [arn + subnet, arn + "security-group/*"]
    statements = [
        allow("Describe", describe, "*"),
        allow(sid, "ec2:RunInstances", [image, *launched, *network, arn + "key-pair/*"]),
        allow("TagAtLaunchOnly", "ec2:CreateTags", launched,
              {"StringEquals": {"ec2:CreateAction": "RunInstances"}}),
        allow("ReadBackTheNewInstance",
              ["ec2:GetLaunchTemplateData", "ec2:DescribeInstanceAttribute"], launched[0]),
        allow("SourceDestCheckOnlyOnRestoredInterfaces", "ec2:ModifyNetworkInterfaceAttribute",
              launched[2], {"Null": {f"aws:ResourceTag/{TAG_RESTORED_FROM}": "false"}}),
        allow("CheckTheInstanceProfileExists", "iam:GetInstanceProfile",
              f"arn:aws:iam::{account}:instance-profile/*"),
        allow("PassOnlyRestorableRolesToEc2", "iam:PassRole",
              f"arn:aws:iam::{account}:role{RESTORABLE_ROLE_PATH}*",
              {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
    ]  # fmt: skip
    if config["DRILL"]:
        statements += drill_statements(config, region, launched[0], image)
    else:
        statements += production_statements(config, region, account, launched, image)
    if config["KMS_KEY_ID"]:
        key = config["KMS_KEY_ID"]
        statements.append(allow(
            "EncryptVolumesThroughEc2Only",
            ["kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext"],
            key if key.startswith("arn:") else "*",
            {"StringEquals": {"kms:ViaService": f"ec2.{region}.amazonaws.com"}},
        ))  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def production_statements(
    config: dict, region: str, account: str, launched: list[str], image: str
) -> list[dict]:
    """What a restore does to production, and a drill never: EnableImage, the Recycle Bin,
    Elastic IPs, load balancers and DNS."""
    arn, snapshot = f"arn:aws:ec2:{region}:{account}:", f"arn:aws:ec2:{region}::snapshot/*"
    marked = {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}
    statements = [
        allow("EnableOnlyMarkedImages", "ec2:EnableImage", image, marked),
        allow("RestoreFromTheRecycleBin",
              ["ec2:RestoreImageFromRecycleBin", "ec2:RestoreSnapshotFromRecycleBin"],
              [image, snapshot]),
    ]  # fmt: skip
    eip = config["ELASTIC_IP"]
    if eip is not None:
        statements += [
            allow("AssociateTheConfigsElasticIp", "ec2:AssociateAddress",
                  arn + f"elastic-ip/{eip}") if eip != "same" else
            allow("AssociateOnlyElasticIpsThatOptIn", "ec2:AssociateAddress", arn + "elastic-ip/*",
                  {"StringEquals": {f"aws:ResourceTag/{RESTORE_OPT_IN_TAG}": "allow"}}),
            allow("AssociateWithTheNewInstance", "ec2:AssociateAddress", launched[::2]),
        ]  # fmt: skip
    statements += balancer_statements(config, region, account)
    if config["DNS_RECORDS"]:
        zones = sorted({r["zone_id"].rsplit("/", 1)[-1] for r in config["DNS_RECORDS"]})
        statements.append(allow(
            "PointOnlyTheConfigsDnsRecords",
            ["route53:ListResourceRecordSets", "route53:ChangeResourceRecordSets"],
            [f"arn:aws:route53:::hostedzone/{z}" for z in zones],
        ))  # fmt: skip
    return statements


def drill_statements(config: dict, region: str, instance: str, image: str) -> list[dict]:
    """A drill's own calls: terminate its instances (tagged TAG_DRILL, which the drill
    can set only at launch), tag images that carry the marker with TAG_VERIFIED only,
    and run DRILL_CHECK's documents on its instances only."""
    statements = [
        allow("TerminateOnlyDrillInstances", "ec2:TerminateInstances", instance,
              {"Null": {f"aws:ResourceTag/{TAG_DRILL}": "false"}}),
        allow("RecordTheResultOnMarkedImagesOnly", "ec2:CreateTags", image, {
            "StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL},
            "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_VERIFIED]},
        }),
    ]  # fmt: skip
    if config["DRILL_CHECK"]:
        documents = [f"arn:aws:ssm:{region}:*:document/{CHECK_DOCUMENTS[p]}"
                     for p in sorted(config["DRILL_CHECK"])]  # fmt: skip
        statements += [
            allow("RunTheCheckDocuments", "ssm:SendCommand", documents),
            allow("RunTheCheckOnDrillInstancesOnly", "ssm:SendCommand", instance,
                  {"Null": {f"ssm:resourceTag/{TAG_DRILL}": "false"}}),
            allow("ReadTheCheck", ["ssm:DescribeInstanceInformation",
                                   "ssm:ListCommandInvocations"], "*"),
        ]  # fmt: skip
    return statements


def balancer_statements(config: dict, region: str, account: str) -> list[dict]:
    """Registration in load balancers: the configured ones by ARN or name; those recorded
    on the image ("same") only if they opt in by tag, as a tag never grants power alone."""
    arn = f"arn:aws:elasticloadbalancing:{region}:{account}:"
    opt_in = {"StringEquals": {f"aws:ResourceTag/{RESTORE_OPT_IN_TAG}": "allow"}}
    made = []
    groups, classic = config["TARGET_GROUPS"], config["CLASSIC_LOAD_BALANCERS"]
    if groups:
        read = ["elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetHealth"]  # fmt: skip
        made.append(allow("ReadTargetGroups", read, "*"))
        if groups == "same":
            made.append(allow("RegisterOnlyInTargetGroupsThatOptIn",
                              "elasticloadbalancing:RegisterTargets", arn + "targetgroup/*",
                              opt_in))  # fmt: skip
        else:
            arns = sorted({g if isinstance(g, str) else g["arn"] for g in groups})
            made.append(allow("RegisterInTheConfigsTargetGroups",
                              "elasticloadbalancing:RegisterTargets", arns))  # fmt: skip
    if classic:
        made.append(allow("ReadClassicLoadBalancers", "elasticloadbalancing:DescribeLoadBalancers",
                          "*"))  # fmt: skip
        register = "elasticloadbalancing:RegisterInstancesWithLoadBalancer"
        if classic == "same":
            made.append(allow("RegisterOnlyWithClassicLoadBalancersThatOptIn", register,
                              arn + "loadbalancer/*", opt_in))  # fmt: skip
        else:
            made.append(allow("RegisterWithTheConfigsClassicLoadBalancers", register,
                              [arn + f"loadbalancer/{n}" for n in classic]))  # fmt: skip
    return made


def allow(sid: str, action: Any, resource: Any, condition: dict | None = None) -> dict:
    """One Allow statement."""
    made = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        made["Condition"] = condition
    return made


# --- Command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; argparse exits 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="ami_to_ec2.py", description="Launch a working replacement instance from a backup."
    )
    parser.add_argument("--config", default=default_config_path(), help="config file")
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
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    noise.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    args = parser.parse_args(argv)
    if args.recycle_bin and not args.list:
        parser.error("--recycle-bin goes with --list")
    if args.client_token is not None and not re.fullmatch(r"[\x21-\x7e]{1,64}", args.client_token):
        parser.error("--client-token must be 1-64 printable ASCII characters")
    return args


def default_config_path() -> str:
    """ami_to_ec2_config.py beside this script."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ami_to_ec2_config.py")


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr; keep botocore quiet unless -vv."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", force=True)
    for noisy in ("botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
