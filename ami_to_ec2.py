#!/usr/bin/env python3
"""Launch a working replacement EC2 instance from a backup made by ec2_to_ami.py.

    python ami_to_ec2.py --server web01 --dry-run
    python ami_to_ec2.py --server web01

The backup recorded the original's launch configuration on the image, so the
server's name is enough, even when the original instance is gone.

Exit codes: 0 launched and reached WAIT, 1 an AWS-side failure (the report
still names every instance launched), 2 usage or config error (no AWS call).

Read it in this order; each section is marked "# --- <name>":
  The tag contract, EC2 facts   what the backup wrote, and the names of things
  The story                     main(), then restore(): config, look, plan, act, report
  Config                        load and check the config and flags, before any AWS call
  What the backup recorded      the launch configuration read back from the tags
  User data                     host name and the operator's user data, merged
  Plan the launch (pure)        RunInstances' parameters, with where each came from
  AWS access                    one session and its client, retries
  Look                          find the backup (or bring it back from the Recycle Bin)
  Do it, Report                 launch, associate, wait; report
  IAM policy                    --print-iam-policy: the least privilege this config needs
  Command line
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import ipaddress
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
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
WAIT_MODES = ("none", "running", "status-ok")
POLL_FIRST_SECONDS, POLL_MAX_SECONDS, POLL_FACTOR = 1.0, 15.0, 1.5
RESTORABLE_ROLE_PATH = "/ec2-to-ami-restorable/"  # the roles the restore policy lets it pass
ELASTIC_IP_OPT_IN_TAG = "ec2-to-ami-restore"  # "allow" on an Elastic IP: a restore may move it
BIN_RESTORE_SECONDS = 120  # for an image restored from the Recycle Bin to show as available
DEFAULT_MAX_ATTEMPTS = 10

# --- The story: main, then the restore ---------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Load and check the config, then list, dry-run or restore."""
    args = parse_args(argv)
    setup_logging(args)
    try:
        settings = apply_flags(load_config(args.config), args)
        config = validate_config(settings, listing=args.list or args.print_iam_policy)
        if args.print_iam_policy:
            return print_iam_policy(config)
        ec2 = make_ec2(config)
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_USAGE
    except RoleError as err:
        log.error("%s", err)
        return EXIT_FAILED
    try:
        if args.list:
            return list_backups(ec2, config, args.recycle_bin)
        return restore(ec2, config, args)
    except RestoreError as err:
        log.error("%s; nothing launched", err)
        return EXIT_FAILED
    except (ClientError, BotoCoreError) as err:
        log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
        return EXIT_FAILED


def restore(ec2: Any, config: dict, args: argparse.Namespace) -> int:
    """Find the backup, plan, check, launch, finish and report."""
    image = find_image(ec2, config)
    if image["State"] == IN_RECYCLE_BIN:
        if args.dry_run:
            print(
                f"Would restore {image['ImageId']} ({image.get('Name', '')}) from the Recycle "
                f"Bin, where it stays until {bin_time(image.get('RecycleBinExitTime'))}, with "
                "its snapshots, then launch from it. Its recorded configuration is on its tags, "
                "which EC2 shows only once it is restored: nothing more can be planned before."
            )
            return EXIT_OK
        image = restore_from_recycle_bin(ec2, image)
    recorded = read_recorded(image)
    token = args.client_token or f"{TOOL}-{uuid.uuid4().hex}"
    alive = original_alive(ec2, recorded)
    plan = plan_launch(config, image, recorded, alive, token, ec2.meta.region_name)
    for warning in plan.warnings:
        log.warning("%s", warning)
    check_before_launch(ec2, plan)
    if args.dry_run:
        return dry_run(ec2, plan, config)
    if image["State"] == DISABLED:
        ec2.enable_image(ImageId=image["ImageId"])
        log.info("enabled %s, which was disabled, to launch from it", image["ImageId"])
    ids = launch(ec2, plan)
    error = None
    try:
        finish(ec2, plan, config, ids)
    except (ClientError, BotoCoreError, LaunchError) as err:
        text = str(err) if isinstance(err, LaunchError) else error_text(err)
        error = f"after launching {', '.join(ids)}: {text}"
    print_report(instance_rows(ec2, ids), plan, error, args.json)
    if error:
        log.error("%s", error)
        return EXIT_FAILED
    return EXIT_OK


# --- Config -------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "REGION": None,
    "PROFILE": None,
    "SERVER": None,
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
    "TERMINATION_PROTECTION": False,
    "IMDSV2": None,
    "VOLUME_TYPE": None,
    "ENCRYPTED": None,
    "KMS_KEY_ID": None,
    "DELETE_ON_TERMINATION": None,
    "WAIT": "status-ok",
    "WAIT_TIMEOUT_MINUTES": 30,
    "REGION_MAP": {},
    "ROLE_ARN": None,
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
    if args.server is not None:
        config["SERVER"], config["AMI_ID"] = args.server, None
    if args.ami is not None:
        config["AMI_ID"], config["SERVER"] = args.ami, None
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
    if not listing and bool(config["SERVER"]) == bool(config["AMI_ID"]):
        raise ConfigError("set exactly one of SERVER and AMI_ID (or --server / --ami)")
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
    for name in ("ALLOW_REASSOCIATION", "TERMINATION_PROTECTION"):
        if not isinstance(config[name], bool):
            raise ConfigError(f"{name} must be True or False, not {config[name]!r}")
    for name in ("ENCRYPTED", "DELETE_ON_TERMINATION"):
        if config[name] is not None and not isinstance(config[name], bool):
            raise ConfigError(f"{name} must be None, True or False, not {config[name]!r}")
    check_volume_settings(config)
    _check_enum(config, "IMDSV2", (None, "required", "optional"))
    _check_enum(config, "WAIT", WAIT_MODES)
    minutes = config["WAIT_TIMEOUT_MINUTES"]
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        raise ConfigError(f"WAIT_TIMEOUT_MINUTES must be a number > 0, not {minutes!r}")
    return config


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


def read_recorded(image: dict) -> Recorded:
    """Read the tag contract off an image; an image without it gives an empty record."""
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    value = lambda key: joined_value(tags, key)  # noqa: E731 - a local shorthand
    keys = json.loads(value(TAG_INSTANCE_TAG_KEYS) or "[]")
    platform = value(TAG_PLATFORM) or ("windows" if image.get("Platform") == "windows" else None)
    return Recorded(
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
    )


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
class Plan:
    """Everything the launch will do."""

    image: dict
    recorded: Recorded
    params: dict[str, Any]
    elastic_ip: str | None
    name: str
    warnings: list[str] = field(default_factory=list)
    eip_holder: str | None = None  # who held the Elastic IP when checked before launch


def plan_launch(
    config: dict, image: dict, recorded: Recorded, original_alive: bool, token: str,
    region: str | None = None,
) -> Plan:  # fmt: skip
    """Build RunInstances parameters from the config, falling back to what was recorded."""
    warnings: list[str] = []
    if recorded.source_region and region and recorded.source_region != region:
        recorded = in_region(config, image, recorded, region, warnings)
    pick = lambda setting, fallback: config[setting] or fallback  # noqa: E731
    instance_type = pick("INSTANCE_TYPE", recorded.instance_type)
    subnet = pick("SUBNET_ID", recorded.subnet_id)
    groups = list(pick("SECURITY_GROUP_IDS", recorded.security_group_ids) or [])
    missing = [
        name for name, v in (("INSTANCE_TYPE", instance_type), ("SUBNET_ID", subnet)) if not v
    ]
    if missing:
        raise RestoreError(
            f"image {image['ImageId']} has no recorded {' or '.join(missing)}; set it in the config"
        )
    name = restored_name(config, recorded, original_alive, warnings)
    params: dict[str, Any] = {
        "ImageId": image["ImageId"],
        "MinCount": config["COUNT"],
        "MaxCount": config["COUNT"],
        "InstanceType": instance_type,
        "SubnetId": subnet,
        "ClientToken": token,
        "MetadataOptions": {
            "HttpTokens": config["IMDSV2"] or recorded.http_tokens or "required",
            "HttpEndpoint": "enabled",
        },
        "DisableApiTermination": config["TERMINATION_PROTECTION"],
        "TagSpecifications": tag_specifications(config, image, recorded, name),
    }
    if groups:
        params["SecurityGroupIds"] = groups
    profile = config["IAM_INSTANCE_PROFILE"] or trusted_profile(config, recorded, image)
    optional = {
        "KeyName": pick("KEY_NAME", recorded.key_name),
        "IamInstanceProfile": instance_profile(profile),
        "PrivateIpAddress": private_ip(config["PRIVATE_IP"], recorded),
        "UserData": build_user_data(recorded.platform, config["HOSTNAME"], config["USER_DATA"]),
        "BlockDeviceMappings": volume_overrides(config, image),
    }
    params.update({k: v for k, v in optional.items() if v})
    eip = recorded.elastic_ip if config["ELASTIC_IP"] == "same" else config["ELASTIC_IP"]
    if eip and config["COUNT"] > 1:
        warnings.append(
            f"COUNT={config['COUNT']}: Elastic IP {eip} goes to the first instance only"
        )
    return Plan(image, recorded, params, eip, name, warnings)


def in_region(
    config: dict, image: dict, recorded: Recorded, region: str, warnings: list[str]
) -> Recorded:
    """A copy's record for a launch in another region than the backup's.

    The recorded subnet, security groups, private IP and Elastic IP belong to the
    source region: they are mapped through REGION_MAP[region], or replaced by
    SUBNET_ID and SECURITY_GROUP_IDS, and never used as they are.
    """
    source, mapping = recorded.source_region, config["REGION_MAP"].get(region, {})
    subnet = mapping.get(recorded.subnet_id or "")
    groups = [mapping.get(g) for g in recorded.security_group_ids]
    if not (config["SUBNET_ID"] or subnet) or not (config["SECURITY_GROUP_IDS"] or all(groups)):
        was = ", ".join([recorded.subnet_id or "-", *recorded.security_group_ids])
        raise RestoreError(
            f"image {image['ImageId']} is a copy from {source}, and the subnet and security "
            f"groups it recorded ({was}) are in {source}. Set SUBNET_ID and SECURITY_GROUP_IDS "
            f"(or --subnet-id and --security-group-ids) to ids in {region}, or map the recorded "
            f"ids to them in REGION_MAP[{region!r}]"
        )
    if config["PRIVATE_IP"] == "same":
        raise RestoreError(
            f'PRIVATE_IP = "same": the recorded address is in {source}; set an address in '
            f"{region} or None"
        )
    eip = mapping.get(recorded.elastic_ip or "")
    if recorded.elastic_ip and not eip and config["ELASTIC_IP"] == "same":
        warnings.append(
            f"Elastic IP {recorded.elastic_ip} is in {source}, so none is associated in {region}; "
            f"set ELASTIC_IP to an allocation in {region}, or map it in REGION_MAP"
        )
    key = mapping.get(recorded.key_name or "", recorded.key_name)
    return replace(
        recorded, subnet_id=subnet, security_group_ids=[g for g in groups if g],
        private_ip=None, elastic_ip=eip, key_name=key,
    )  # fmt: skip


def restored_name(config: dict, recorded: Recorded, original_alive: bool, warnings: list) -> str:
    """NAME, or the original's Name, with "-restored" while the original still exists."""
    if config["NAME"]:
        return config["NAME"]
    name = recorded.instance_tags.get("Name") or recorded.server or "restored"
    if original_alive:
        warnings.append(
            f"original instance {recorded.instance_id} still exists, so the new instance is "
            f"named {name}-restored; set NAME to choose"
        )
        name += "-restored"
    return name


def tag_specifications(config: dict, image: dict, recorded: Recorded, name: str) -> list[dict]:
    """The original's tags, then TAGS, then Name and the restored-from tags."""
    tags = {**recorded.instance_tags, **config["TAGS"], "Name": name}
    tags[TAG_RESTORED_FROM] = image["ImageId"]
    if recorded.created:
        tags[TAG_RESTORED_BACKUP_TIME] = recorded.created
    if len(tags) > MAX_TAGS:
        raise RestoreError(f"{len(tags)} tags for the new instance; EC2 allows 50: trim TAGS")
    pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
    return [{"ResourceType": kind, "Tags": pairs} for kind in ("instance", "volume")]


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


def private_ip(setting: str | None, recorded: Recorded) -> str | None:
    """The fixed private address, if one was asked for."""
    if setting != "same":
        return setting
    if not recorded.private_ip:
        raise RestoreError('PRIVATE_IP = "same", but the backup recorded no private address')
    return recorded.private_ip


def volume_overrides(config: dict, image: dict) -> list[dict] | None:
    """Apply VOLUME_TYPE, ENCRYPTED, KMS_KEY_ID and DELETE_ON_TERMINATION to every EBS volume."""
    ebs: dict[str, Any] = {}
    if config["VOLUME_TYPE"]:
        ebs["VolumeType"] = config["VOLUME_TYPE"]
    if config["ENCRYPTED"] is not None or config["KMS_KEY_ID"]:
        ebs["Encrypted"] = config["ENCRYPTED"] is not False
    if config["KMS_KEY_ID"]:
        ebs["KmsKeyId"] = config["KMS_KEY_ID"]
    if config["DELETE_ON_TERMINATION"] is not None:
        ebs["DeleteOnTermination"] = config["DELETE_ON_TERMINATION"]
    if not ebs:
        return None
    devices = [m["DeviceName"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m]
    return [{"DeviceName": device, "Ebs": dict(ebs)} for device in devices] or None


# --- AWS access ---------------------------------------------------------------------------------


def make_ec2(config: dict) -> Any:
    """Build the EC2 client: region, profile and botocore's standard retries."""
    session, client_config = base_session(config["PROFILE"], config["REGION"])
    if config["ROLE_ARN"]:
        name = SESSION_NAME_BAD_CHARS.sub("-", f"{TOOL}-restore-{getpass.getuser()}")[:64]
        session = assume_role(session, config["ROLE_ARN"], name, client_config)
    return session.client("ec2", config=client_config)


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
    ec2: Any, server: str | None, schedule: str | None, pool: str | None = None
) -> list[dict]:
    """This tool's images in this account and region, newest first."""
    filters = [{"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]}]
    for key, value in ((TAG_SERVER, server), (TAG_SCHEDULE, schedule), (TAG_POOL, pool)):
        if value:
            filters.append({"Name": f"tag:{key}", "Values": [value]})
    images: list[dict] = []
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
    """The image to restore: AMI_ID (a disabled one too: the restore enables it), or the
    newest available backup of SERVER (a newer disabled one is named in a warning)."""
    if config["AMI_ID"]:
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
    images = managed_images(ec2, config["SERVER"], config["SCHEDULE"], config["POOL"])
    before = config["BACKUP_BEFORE"]
    usable = [
        i
        for i in images
        if i["State"] == AVAILABLE and (before is None or backup_time(i) <= before)
    ]
    newer = [
        i["ImageId"]
        for i in images
        if i["State"] == DISABLED
        and (before is None or backup_time(i) <= before)
        and (not usable or backup_time(i) > backup_time(usable[0]))
    ]
    if newer:
        log.warning(
            "newer backups of %s are disabled: %s; to restore one, name it with --ami "
            "(the restore enables it first)", config["SERVER"], ", ".join(newer),
        )  # fmt: skip
    if not usable:
        raise RestoreError(no_backup_message(ec2, config))
    pools = sorted({p for p in (image_tag(i, TAG_POOL) for i in usable) if p})
    if len(pools) > 1:
        raise RestoreError(
            f"server {config['SERVER']!r} has backups in several pools ({', '.join(pools)}): "
            "backup configs that each have a server of that name; choose one with POOL "
            "(or --pool)"
        )
    return usable[0]


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


def no_backup_message(ec2: Any, config: dict) -> str:
    """Say which backup is missing, and which servers do have backups."""
    scope = f" of schedule {config['SCHEDULE']}" if config["SCHEDULE"] else ""
    when = (
        f" at or before {config['BACKUP_BEFORE']:%Y-%m-%dT%H:%M:%SZ}"
        if config["BACKUP_BEFORE"]
        else ""
    )
    servers = sorted(
        {read_recorded(i).server or "?" for i in managed_images(ec2, None, config["SCHEDULE"])}
    )
    known = ", ".join(servers) if servers else "none"
    server = config["SERVER"]
    return f"no available backup{scope} of server {server!r}{when}. Servers with backups: {known}"


def original_alive(ec2: Any, recorded: Recorded) -> bool:
    """Whether the backed-up instance still exists (not terminated)."""
    if not recorded.instance_id:
        return False
    filters = [{"Name": "instance-id", "Values": [recorded.instance_id]}]
    reservations = ec2.describe_instances(Filters=filters).get("Reservations", [])
    states = {i["State"]["Name"] for r in reservations for i in r["Instances"]}
    return bool(states - GONE_STATES)


def check_before_launch(ec2: Any, plan: Plan) -> None:
    """Check cheaply what EC2 would refuse or get wrong; raise RestoreError if so."""
    params = plan.params
    subnet_id = params["SubnetId"]
    subnet, *_ = describe(
        ec2, f"subnet {subnet_id}", "describe_subnets", "Subnets", SubnetIds=[subnet_id]
    )
    groups = params.get("SecurityGroupIds", [])
    if groups:
        what = f"security group(s) {', '.join(groups)}"
        found = describe(ec2, what, "describe_security_groups", "SecurityGroups", GroupIds=groups)
        for group in found:
            if group.get("VpcId") != subnet["VpcId"]:
                raise RestoreError(
                    f"security group {group['GroupId']} is in {group.get('VpcId')}, but subnet "
                    f"{subnet_id} is in {subnet['VpcId']}; set SUBNET_ID and SECURITY_GROUP_IDS"
                )
    if params.get("KeyName"):
        what = f"key pair {params['KeyName']}"
        describe(ec2, what, "describe_key_pairs", "KeyPairs", KeyNames=[params["KeyName"]])
    check_architecture(ec2, plan)
    if params.get("PrivateIpAddress"):
        check_address_free(ec2, params["PrivateIpAddress"], subnet)
    if plan.elastic_ip:
        plan.eip_holder = elastic_ip_holder(ec2, plan.elastic_ip)


def check_architecture(ec2: Any, plan: Plan) -> None:
    """The instance type must run the image's architecture."""
    instance_type = plan.params["InstanceType"]
    what = f"instance type {instance_type}"
    info, *_ = describe(
        ec2, what, "describe_instance_types", "InstanceTypes", InstanceTypes=[instance_type]
    )
    supported = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    architecture = plan.image.get("Architecture")
    if architecture and supported and architecture not in supported:
        raise RestoreError(
            f"instance type {instance_type} runs {', '.join(supported)}, but image "
            f"{plan.image['ImageId']} is {architecture}; set INSTANCE_TYPE"
        )


def check_address_free(ec2: Any, address: str, subnet: dict) -> None:
    """A fixed private address must lie in the subnet and be unused."""
    if ipaddress.IPv4Address(address) not in ipaddress.IPv4Network(subnet["CidrBlock"]):
        raise RestoreError(
            f"private IP {address} is outside subnet {subnet['SubnetId']} ({subnet['CidrBlock']})"
        )
    filters = [
        {"Name": "subnet-id", "Values": [subnet["SubnetId"]]},
        {"Name": "addresses.private-ip-address", "Values": [address]},
    ]
    for eni in ec2.describe_network_interfaces(Filters=filters).get("NetworkInterfaces", []):
        holder = eni.get("Attachment", {}).get("InstanceId") or eni["NetworkInterfaceId"]
        raise RestoreError(f"private IP {address} is in use by {holder}; set PRIVATE_IP = None")


def elastic_ip_holder(ec2: Any, allocation: str) -> str | None:
    """Who holds the Elastic IP now (an instance or interface id), or None if it is free."""
    what = f"Elastic IP allocation {allocation}"
    try:
        found = describe(ec2, what, "describe_addresses", "Addresses", AllocationIds=[allocation])
    except RestoreError as err:
        raise RestoreError(f"{err}; set ELASTIC_IP = None to restore without it") from None
    address = found[0]
    return address.get("InstanceId") or address.get("NetworkInterfaceId") or None


def settle_elastic_ip(ec2: Any, plan: Plan, config: dict, launched: list[str]) -> str | None:
    """The allocation to associate now, or None; warn when another instance holds it."""
    allocation = plan.elastic_ip
    if not allocation:
        return None
    holder = elastic_ip_holder(ec2, allocation)
    if holder and holder in launched:
        return None  # a rerun with the same client token: already done
    if holder and not config["ALLOW_REASSOCIATION"]:
        warning = (
            f"Elastic IP {allocation} is held by {holder} and was not moved; "
            "set ALLOW_REASSOCIATION = True to move it"
        )
        plan.warnings.append(warning)
        log.warning("%s", warning)
        return None
    return allocation


# --- Do it ----------------------------------------------------------------------------------------


class LaunchError(Exception):
    """A failure after instances were launched."""


def launch(ec2: Any, plan: Plan) -> list[str]:
    """RunInstances once for COUNT instances; return their ids."""
    response = ec2.run_instances(**plan.params)
    ids = [i["InstanceId"] for i in response["Instances"]]
    log.info(
        "launched %s from %s (client token %s)",
        ", ".join(ids),
        plan.image["ImageId"],
        plan.params["ClientToken"],
    )
    return ids


def finish(ec2: Any, plan: Plan, config: dict, ids: list[str]) -> None:
    """Associate the Elastic IP and wait as WAIT asks; raise LaunchError on failure."""
    deadline = time.monotonic() + config["WAIT_TIMEOUT_MINUTES"] * 60
    allocation = settle_elastic_ip(ec2, plan, config, ids)
    if allocation or config["WAIT"] != "none":
        poll(lambda: running(ec2, ids), deadline, "running")
    if allocation:
        ec2.associate_address(
            AllocationId=allocation,
            InstanceId=ids[0],
            AllowReassociation=config["ALLOW_REASSOCIATION"],
        )
        log.info("associated Elastic IP %s with %s", allocation, ids[0])
    if config["WAIT"] == "status-ok":
        poll(lambda: status_ok(ec2, ids), deadline, "status checks ok")


def poll(check: Any, deadline: float, what: str) -> None:
    """Call check until it is true, backing off from 1 s to 15 s, until the deadline."""
    delay = POLL_FIRST_SECONDS
    while not check():
        if time.monotonic() >= deadline:
            raise LaunchError(f"instances not {what} before WAIT_TIMEOUT_MINUTES ran out")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)


def running(ec2: Any, ids: list[str]) -> bool:
    """Whether every instance is running; an instance that died raises LaunchError."""
    instances = describe_launched(ec2, ids)
    for instance in instances:
        state = instance["State"]["Name"]
        if state not in (PENDING, RUNNING):
            reason = instance.get("StateReason", {}).get("Message", "no reason given")
            raise LaunchError(f"instance {instance['InstanceId']} is {state}: {reason}")
    return len(instances) == len(ids) and all(i["State"]["Name"] == RUNNING for i in instances)


def status_ok(ec2: Any, ids: list[str]) -> bool:
    """Whether every instance passes its instance and system status checks."""
    statuses = ec2.describe_instance_status(InstanceIds=ids, IncludeAllInstances=True)
    ok = [
        s["InstanceId"]
        for s in statuses.get("InstanceStatuses", [])
        if s.get("InstanceStatus", {}).get("Status") == STATUS_OK
        and s.get("SystemStatus", {}).get("Status") == STATUS_OK
    ]
    return len(ok) == len(ids)


def describe_launched(ec2: Any, ids: list[str]) -> list[dict]:
    """The launched instances as they are now (new ids may not be visible at once)."""
    filters = [{"Name": "instance-id", "Values": ids}]
    reservations = ec2.describe_instances(Filters=filters).get("Reservations", [])
    return [i for r in reservations for i in r["Instances"]]


# --- Report --------------------------------------------------------------------------------


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


def print_report(rows: list[dict], plan: Plan, error: str | None, as_json: bool) -> None:
    """Print the launched instances as a table or as JSON."""
    if as_json:
        document = {
            "image_id": plan.image["ImageId"],
            "client_token": plan.params["ClientToken"],
            "instances": rows,
            "warnings": plan.warnings,
            "error": error,
        }
        print(json.dumps(document, indent=2))
        return
    header = {"instance_id": "INSTANCE", "state": "STATE", "private_ip": "PRIVATE IP",
              "public_ip": "PUBLIC IP", "availability_zone": "ZONE", "name": "NAME"}  # fmt: skip
    print_table([header, *rows], list(header))
    print(f"client token: {plan.params['ClientToken']} (rerun with --client-token to retry safely)")


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
    shown = f"{len(user_data)} bytes (not shown)" if user_data else "none"
    eip = plan.elastic_ip or "none"
    if plan.eip_holder:
        moved = "moved" if config["ALLOW_REASSOCIATION"] else "left there (ALLOW_REASSOCIATION)"
        eip += f", now held by {plan.eip_holder}: would be {moved}"
    return [
        f"Would launch {p['MinCount']} x {p['InstanceType']} from {p['ImageId']} "
        f"(server {r.server or '-'}, backup {r.created or '-'}, schedule {r.schedule or '-'})",
        f"  name:                   {plan.name}",
        f"  subnet:                 {p['SubnetId']}",
        f"  security groups:        {', '.join(p.get('SecurityGroupIds', [])) or 'VPC default'}",
        f"  key pair:               {p.get('KeyName', 'none')}",
        f"  instance profile:       {profile_origin(p, config)}",
        f"  private IP:             {p.get('PrivateIpAddress', 'a new address')}",
        f"  IMDS:                   HttpTokens={p['MetadataOptions']['HttpTokens']}",
        f"  termination protection: {'on' if p['DisableApiTermination'] else 'off'}",
        f"  Elastic IP:             {eip}",
        f"  user data:              {shown}",
        f"  volumes:                {volumes or 'as the image has them'}",
        f"  tags:                   {tags}",
        f"  wait:                   {config['WAIT']}",
        f"  client token:           {p['ClientToken']}",
    ]


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


def dry_run(ec2: Any, plan: Plan, config: dict) -> int:
    """Print the plan and let EC2 check it with DryRun=True; launch nothing."""
    for line in describe_plan(plan, config):
        print(line)
    if plan.image["State"] == DISABLED:
        print(f"Would enable {plan.image['ImageId']} first: it is disabled, so EC2 cannot "
              "check this RunInstances request before that (DryRun skipped).")  # fmt: skip
        return EXIT_OK
    params = {k: v for k, v in plan.params.items() if k != "ClientToken"}
    try:
        ec2.run_instances(DryRun=True, **params)
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DRY_RUN_OK:
            raise
    print("DryRun: EC2 accepts this RunInstances request (permissions and parameters).")
    return EXIT_OK


def list_backups(ec2: Any, config: dict, recycle_bin: bool = False) -> int:
    """Print the restorable backups of SERVER (or of every server), newest first; and
    with recycle_bin the images in the Recycle Bin, which `--ami` restores."""
    images = managed_images(ec2, config["SERVER"], config["SCHEDULE"])
    columns = ["server", "image", "created", "schedule", "state", "type", "subnet"]
    rows: list[dict] = [{c: c.upper() for c in columns}]
    for image in sorted(images, key=lambda i: read_recorded(i).server or ""):
        r = read_recorded(image)
        rows.append({"server": r.server, "image": image["ImageId"], "created": r.created,
                     "schedule": r.schedule, "state": image["State"],
                     "type": r.instance_type, "subnet": r.subnet_id})  # fmt: skip
    print_table(rows, columns)
    if not images:
        print("(no backups)")
    if recycle_bin:
        print_recycle_bin(ec2)
    return EXIT_OK


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


# --- IAM policy: the least privilege this config needs --------------------------------------


def print_iam_policy(config: dict) -> int:
    """--print-iam-policy: the policy this config's restores need, as JSON; no AWS call."""
    print(json.dumps(iam_policy(config), indent=2))
    return EXIT_OK


def iam_policy(config: dict) -> dict:
    """The least-privilege policy for restores with this config, in its region and account.

    The instance profile a restore hands out comes from the image's tag, so PassRole is
    limited to roles under RESTORABLE_ROLE_PATH: create the roles a restore may pass
    there (ALLOWED_INSTANCE_PROFILES checks the profile too). The Elastic IP is the
    configured allocation, or one tagged ELASTIC_IP_OPT_IN_TAG = "allow".
    """
    region = base_session(config["PROFILE"], config["REGION"])[0].region_name
    account = config["ROLE_ARN"].split(":")[4] if config["ROLE_ARN"] else "*"
    arn = f"arn:aws:ec2:{region}:{account}:"
    image, snapshot = f"arn:aws:ec2:{region}::image/*", f"arn:aws:ec2:{region}::snapshot/*"
    subnet = f"subnet/{config['SUBNET_ID']}" if config["SUBNET_ID"] else "subnet/*"
    launched = [arn + k for k in ("instance/*", "volume/*", "network-interface/*")]
    describe = [
        "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
        "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
        "ec2:DescribeKeyPairs", "ec2:DescribeNetworkInterfaces", "ec2:DescribeAddresses",
        "ec2:DescribeSnapshots", "ec2:ListImagesInRecycleBin", "ec2:ListSnapshotsInRecycleBin",
    ]  # fmt: skip
    marked = {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}
    eip = config["ELASTIC_IP"]
    statements = [
        allow("Describe", describe, "*"),
        allow("LaunchInTheConfigsRegion", "ec2:RunInstances",
              [image, *launched, arn + subnet, arn + "security-group/*", arn + "key-pair/*"]),
        allow("TagAtLaunchOnly", "ec2:CreateTags", launched[:2],
              {"StringEquals": {"ec2:CreateAction": "RunInstances"}}),
        allow("EnableOnlyMarkedImages", "ec2:EnableImage", image, marked),
        allow("RestoreFromTheRecycleBin",
              ["ec2:RestoreImageFromRecycleBin", "ec2:RestoreSnapshotFromRecycleBin"],
              [image, snapshot]),
        allow("PassOnlyRestorableRolesToEc2", "iam:PassRole",
              f"arn:aws:iam::{account}:role{RESTORABLE_ROLE_PATH}*",
              {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
    ]  # fmt: skip
    if eip is not None:
        statements += [
            allow("AssociateTheConfigsElasticIp", "ec2:AssociateAddress",
                  arn + f"elastic-ip/{eip}") if eip != "same" else
            allow("AssociateOnlyElasticIpsThatOptIn", "ec2:AssociateAddress", arn + "elastic-ip/*",
                  {"StringEquals": {f"aws:ResourceTag/{ELASTIC_IP_OPT_IN_TAG}": "allow"}}),
            allow("AssociateWithTheNewInstance", "ec2:AssociateAddress", launched[::2]),
        ]  # fmt: skip
    if config["KMS_KEY_ID"]:
        key = config["KMS_KEY_ID"]
        statements.append(allow(
            "EncryptVolumesThroughEc2Only",
            ["kms:CreateGrant", "kms:Decrypt", "kms:GenerateDataKeyWithoutPlaintext"],
            key if key.startswith("arn:") else "*",
            {"StringEquals": {"kms:ViaService": f"ec2.{region}.amazonaws.com"}},
        ))  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


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
    which.add_argument("--server", metavar="NAME", help="restore this server's newest backup")
    which.add_argument("--ami", metavar="ID", help="restore this exact image")
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
