#!/usr/bin/env python3
"""Back up EC2 instances as AMIs, tag them at creation, and prune old ones by retention.

Run it from cron:  python ec2_to_ami.py --config /etc/ec2-backup/daily.py -q

Exit codes: 0 all servers done, 1 at least one server failed (the others were
still done), 2 usage or config error (nothing done), 3 another run of the same
config holds its lock (nothing done).
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import shlex
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
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

MAX_TAGS = 50
TAG_VALUE_MAX = 256
TAG_KEY_MAX = 128

# --- EC2 facts ----------------------------------------------------------------
AVAILABLE, PENDING, FAILED = "available", "pending", "failed"
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
ERR_DUPLICATE_NAME = "InvalidAMIName.Duplicate"
ERR_SNAPSHOT_IN_USE = "InvalidSnapshot.InUse"
ERR_SNAPSHOT_NOT_FOUND = "InvalidSnapshot.NotFound"
SNAPSHOT_SKIPPED = "skipped"  # DeregisterImage kept a snapshot another image uses
SNAPSHOT_DELETED = "success"
FILTER_VALUES_MAX = 200
AMI_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
AMI_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]")
INSTANCE_ID_RE = re.compile(r"^i-([0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SCHEDULE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

CRON_MARKER = "# ec2-to-ami-cron config="  # ends each managed crontab entry
CRON_SPECIAL = {"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                "@hourly"}  # fmt: skip
CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-]+$")

# EC2's request token buckets for the calls a run makes per server: (size, refill per second).
# The client waits for a token before each call instead of being refused (see Pacer).
PACED_CALLS = {
    "CreateImage": ("mutating", 50, 5.0),
    "DeregisterImage": ("delete", 100, 5.0),
    "DeleteSnapshot": ("delete", 100, 5.0),
}

# Tokens the pacer leaves in EC2's bucket, so jitter in when calls arrive is not refused.
PACER_SLACK = 2

POLL_FIRST_SECONDS, POLL_MAX_SECONDS, POLL_FACTOR = 1.0, 15.0, 1.5
# In a long (paced) run the first poll comes this soon, so pruning starts while EC2's
# delete bucket still refills; later polls come every POLL_MAX_SECONDS, so they stay few.
POLL_WHILE_CREATING_FIRST_SECONDS = 10.0
DEFAULT_MAX_ATTEMPTS = 10

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
    "NAME_FORMAT": "{server}-{schedule}-{time:%Y%m%d-%H%M%S}",
    "WAIT": True,
    "WAIT_TIMEOUT_MINUTES": 120,
    "LOG_FILE": None,
    "CONSISTENCY": None,
    "PRE_SCRIPT": None,
    "POST_SCRIPT": None,
    "SCRIPT_TIMEOUT_SECONDS": 300,
    "ON_SCRIPT_FAILURE": "fail",
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
CONTRACT_TAGS_MAX = 20


class ConfigError(Exception):
    """A config problem; the message names the setting."""


@dataclass
class ServerSpec:
    """A server as the config names it."""

    name: str
    instance_id: str
    keep: int
    tags: dict[str, str] = field(default_factory=dict)
    consistency: str = "crash"  # one of CONSISTENCY_MODES
    pre_script: str | None = None
    post_script: str | None = None
    platform: str | None = None  # known from SERVERS, else from the instance

    @property
    def no_reboot(self) -> bool:
        """Whether CreateImage runs without rebooting: every mode but "reboot"."""
        return self.consistency != "reboot"


def load_config(path: str) -> dict[str, Any]:
    """Read a config file and return its validated settings."""
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
    except Exception as err:  # any failure in the file is a config error
        raise ConfigError(f"{path}: {type(err).__name__}: {err}") from None
    settings = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
    return validate_config(settings)


def validate_config(settings: dict[str, Any]) -> dict[str, Any]:
    """Check every setting's name, type and range; return them merged with defaults."""
    for name in settings:
        if name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")
    config = {**DEFAULTS, **settings}
    _check_optional_str(config, "REGION", REGION_RE, "a region such as eu-west-1")
    _check_optional_str(config, "PROFILE")
    _check_optional_str(config, "LOG_FILE")
    _check_int(config, "KEEP", minimum=1)
    _check_number(config, "WAIT_TIMEOUT_MINUTES", allow_none=False)
    _check_number(config, "MAX_AGE_DAYS", allow_none=True)
    for name in ("NO_REBOOT", "COPY_INSTANCE_TAGS", "WAIT"):
        _check_bool(config[name], name)
    check_consistency_settings(config)
    if not isinstance(config["SCHEDULE"], str) or not SCHEDULE_RE.match(config["SCHEDULE"]):
        raise ConfigError("SCHEDULE must be 1-64 letters, digits, '.', '_' or '-'")
    check_tags(config["TAGS"], "TAGS")
    check_tag_room(config["TAGS"], "TAGS")
    check_tags(config["SELECT_TAGS"], "SELECT_TAGS", allow_reserved=True)
    config["SERVERS"] = check_servers(config)
    check_name_format(config)
    if not config["SERVERS"] and not config["SELECT_TAGS"]:
        raise ConfigError("SERVERS and SELECT_TAGS are both empty: nothing to back up")
    return config


def check_consistency_settings(config: dict) -> None:
    """CONSISTENCY, the scripts, their timeout and ON_SCRIPT_FAILURE."""
    if config["CONSISTENCY"] not in (None, *CONSISTENCY_MODES):
        raise ConfigError(f"CONSISTENCY must be None or one of {', '.join(CONSISTENCY_MODES)}")
    _check_optional_str(config, "PRE_SCRIPT")
    _check_optional_str(config, "POST_SCRIPT")
    _check_int(config, "SCRIPT_TIMEOUT_SECONDS", minimum=30)
    if config["ON_SCRIPT_FAILURE"] not in ("fail", "crash"):
        raise ConfigError("ON_SCRIPT_FAILURE must be 'fail' or 'crash'")
    if config["CONSISTENCY"] == "scripts" and not (config["PRE_SCRIPT"] or config["POST_SCRIPT"]):
        raise ConfigError("CONSISTENCY 'scripts' needs PRE_SCRIPT or POST_SCRIPT")


def _check_optional_str(config: dict, name: str, pattern=None, example: str = "") -> None:
    """A setting that is None or a non-empty string (matching pattern, if given)."""
    value = config[name]
    if value is None:
        return
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        want = example or "a non-empty string"
        raise ConfigError(f"{name} must be None or {want}, not {value!r}")


def _check_bool(value: Any, name: str) -> None:
    """A setting that is True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, not {value!r}")


def _check_int(config: dict, name: str, minimum: int) -> None:
    """A whole-number setting of at least minimum."""
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, not {value!r}")


def _check_number(config: dict, name: str, allow_none: bool) -> None:
    """A positive number setting, optionally None."""
    value = config[name]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        none = "None or " if allow_none else ""
        raise ConfigError(f"{name} must be {none}a number > 0, not {value!r}")


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


def check_servers(config: dict) -> list[ServerSpec]:
    """Validate SERVERS and turn each entry into a ServerSpec."""
    servers = config["SERVERS"]
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
        specs.append(_server_spec(entry, where, config))
    _check_unique(specs)
    return specs


def _server_spec(entry: dict, where: str, config: dict) -> ServerSpec:
    """Check one SERVERS entry and build its ServerSpec."""
    name, instance_id = entry.get("name"), entry.get("instance_id")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(instance_id, str) or not INSTANCE_ID_RE.match(instance_id):
        raise ConfigError(
            f"{where} ({name}): 'instance_id' {instance_id!r} is not an instance id "
            "(i- and 8 or 17 hex digits)"
        )
    keep = entry.get("keep", config["KEEP"])
    _check_int({f"{where}['keep']": keep}, f"{where}['keep']", minimum=1)
    if "no_reboot" in entry:
        _check_bool(entry["no_reboot"], f"{where}['no_reboot']")
    tags = entry.get("tags", {})
    check_tags(tags, f"{where}['tags']")
    check_tag_room({**config["TAGS"], **tags}, f"TAGS plus {where}['tags']")
    spec = ServerSpec(name, instance_id, keep, dict(tags))
    return with_consistency(spec, entry, config, where)


def with_consistency(spec: ServerSpec, entry: dict, config: dict, where: str) -> ServerSpec:
    """Resolve a server's consistency: its own setting, its no_reboot, then the global ones."""
    mode = entry.get("consistency")
    if mode is None and "no_reboot" in entry:
        mode = "crash" if entry["no_reboot"] else "reboot"
    spec.consistency = (
        mode or config["CONSISTENCY"] or ("crash" if config["NO_REBOOT"] else "reboot")
    )
    if spec.consistency not in CONSISTENCY_MODES:
        raise ConfigError(f"{where}['consistency'] must be one of {', '.join(CONSISTENCY_MODES)}")
    spec.pre_script = entry.get("pre_script", config["PRE_SCRIPT"])
    spec.post_script = entry.get("post_script", config["POST_SCRIPT"])
    spec.platform = entry.get("platform")
    for key, value in (("pre_script", spec.pre_script), ("post_script", spec.post_script)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}['{key}'] (or {key.upper()}) must be None or a command")
    if spec.platform not in (None, *PLATFORMS):
        raise ConfigError(f"{where}['platform'] must be None, 'windows' or 'linux'")
    if spec.consistency == "scripts" and not (spec.pre_script or spec.post_script):
        raise ConfigError(
            f"{where} ({spec.name}): consistency 'scripts' needs PRE_SCRIPT or POST_SCRIPT"
        )
    if spec.consistency == "vss" and spec.platform == "linux":
        raise ConfigError(f"{where} ({spec.name}): consistency 'vss' is for Windows; this is linux")
    return spec


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


def check_name_format(config: dict) -> None:
    """NAME_FORMAT uses only known fields, includes {time}, and renders a valid name."""
    fmt = config["NAME_FORMAT"]
    if not isinstance(fmt, str):
        raise ConfigError(f"NAME_FORMAT must be a string, not {fmt!r}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as err:
        raise ConfigError(f"NAME_FORMAT is not a valid format string: {err}") from None
    if "time" not in fields:
        raise ConfigError("NAME_FORMAT must contain {time}, so each backup has its own name")
    unknown = fields - NAME_FIELDS
    if unknown:
        raise ConfigError(f"NAME_FORMAT: unknown field {{{sorted(unknown)[0]}}}")
    sample = ServerSpec("server", "i-0123456789abcdef0", 1)
    try:
        name = render_name(fmt, sample, config["SCHEDULE"], datetime(2026, 1, 2, 3, 4, 5))
    except (ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"NAME_FORMAT does not render: {err}") from None
    if not AMI_NAME_RE.match(name):
        raise ConfigError(f"NAME_FORMAT renders {name!r}, not a valid AMI name (3-128 chars)")


def render_name(fmt: str, server: ServerSpec, schedule: str, when: datetime) -> str:
    """Render an AMI name, replacing characters EC2 does not allow with '-'."""
    name = fmt.format(
        server=server.name, schedule=schedule, time=when, instance_id=server.instance_id
    )
    return AMI_NAME_BAD_CHARS.sub("-", name)


# --- Retention planning (pure) ------------------------------------------------


@dataclass
class Image:
    """A managed image as DescribeImages reports it."""

    image_id: str
    name: str
    state: str
    created: datetime
    server: str
    schedule: str
    instance_id: str = ""
    snapshot_ids: list[str] = field(default_factory=list)
    reason: str = ""  # StateReason, for a failed image


def plan_prune(
    images: list[Image], keep: int, max_age_days: float | None, now: datetime
) -> list[tuple[Image, str]]:
    """Return (image, reason) for each image of one server that retention removes.

    Failed images always go. Pending images never go. Of the available ones the
    newest `keep` stay; older ones go, and with max_age_days so does any but the
    newest that is older than that.
    """
    doomed = [(image, "state failed") for image in images if image.state == FAILED]
    available = sorted(
        (image for image in images if image.state == AVAILABLE),
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


# --- Tags -----------------------------------------------------------------------


def split_value(key: str, value: str) -> list[tuple[str, str]]:
    """Store a long value under key, key:2, key:3, ... without cutting it short."""
    chunks = [value[i : i + TAG_VALUE_MAX] for i in range(0, len(value), TAG_VALUE_MAX)]
    return [(key if n == 0 else f"{key}:{n + 1}", chunk) for n, chunk in enumerate(chunks)]


def contract_tags(
    server: ServerSpec, schedule: str, created: datetime, instance: dict, eip: str | None
) -> list[tuple[str, str]]:
    """The tool's own tags for one backup: identity plus launch configuration."""
    groups = ",".join(g["GroupId"] for g in instance.get("SecurityGroups", []))
    values = [
        (TAG_MANAGED, TOOL),
        (TAG_SERVER, server.name),
        (TAG_SCHEDULE, schedule),
        (TAG_INSTANCE_ID, server.instance_id),
        (TAG_CREATED, stamp(created)),
        (TAG_INSTANCE_TYPE, instance.get("InstanceType")),
        (TAG_SUBNET, instance.get("SubnetId")),
        (TAG_SECURITY_GROUPS, groups),
        (TAG_KEY_NAME, instance.get("KeyName")),
        (TAG_INSTANCE_PROFILE, instance.get("IamInstanceProfile", {}).get("Arn")),
        (TAG_PRIVATE_IP, instance.get("PrivateIpAddress")),
        (TAG_ELASTIC_IP, eip),
        (TAG_PLATFORM, "windows" if instance.get("Platform") == "windows" else "linux"),
        (TAG_HTTP_TOKENS, instance.get("MetadataOptions", {}).get("HttpTokens")),
    ]
    tags: list[tuple[str, str]] = []
    for key, value in values:
        if value:
            tags.extend(split_value(key, value))
    return tags


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


def make_clients(config: dict) -> tuple[Any, Any]:
    """Build the EC2 and SSM clients: region, profile and botocore's standard retries."""
    try:
        core = botocore.session.Session(profile=config["PROFILE"])
        # AWS_REGION is what other SDKs and the AWS CLI read; botocore reads AWS_DEFAULT_REGION.
        region = config["REGION"] or os.environ.get("AWS_REGION") or None
        session = boto3.Session(botocore_session=core, region_name=region)
    except ProfileNotFound as err:
        raise ConfigError(f"PROFILE: {err}") from None
    if not session.region_name:
        raise ConfigError(
            "REGION is None, and none of AWS_REGION, AWS_DEFAULT_REGION or the profile sets one"
        )
    attempts = core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS
    retries = {"mode": "standard", "total_max_attempts": int(attempts)}
    client_config = Config(retries=retries, user_agent_extra=TOOL)
    ec2 = session.client("ec2", config=client_config)
    pace(ec2)
    return ec2, session.client("ssm", config=client_config)


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


def pace(ec2: Any) -> None:
    """Make the client wait for a token of the right bucket before each paced call."""
    pacers: dict[str, Pacer] = {}
    for operation, (bucket, size, rate) in PACED_CALLS.items():
        pacer = pacers.setdefault(bucket, Pacer(size, rate))
        ec2.meta.events.register(f"before-call.ec2.{operation}", pacer.wait)


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
    eip: str | None = None


@dataclass
class Outcome:
    """What happened to one server in this run."""

    name: str
    instance_id: str
    image_id: str | None = None
    created_tag: str = ""  # the TAG_CREATED value of this run's image
    image: Image | None = None  # this run's image as last seen
    error: str | None = None
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    post_command: str | None = None  # the post-script's SSM command, checked after the creates
    post_error: str | None = None  # a failed post-script: reported, but the image stands


def describe_instances(ec2: Any, filters: list[dict]) -> list[dict]:
    """All instances matching filters, flattened out of their reservations."""
    reservations = paginate(ec2, "describe_instances", "Reservations", Filters=filters)
    return [instance for r in reservations for instance in r["Instances"]]


def discover(ec2: Any, config: dict, only: list[str]) -> tuple[list[Server], list[Outcome]]:
    """Resolve SERVERS and SELECT_TAGS to instances; return servers and early failures."""
    specs = [s for s in config["SERVERS"] if not only or s.name in only]
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
    servers += select_by_tags(ec2, config, set(ids) | {s.instance_id for s in config["SERVERS"]})
    servers = [s for s in servers if not only or s.spec.name in only]
    return split_name_clashes(servers, failures)


def select_by_tags(ec2: Any, config: dict, listed: set[str]) -> list[Server]:
    """Every live instance carrying all SELECT_TAGS that SERVERS does not list."""
    if not config["SELECT_TAGS"]:
        return []
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in config["SELECT_TAGS"].items()]
    filters.append({"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES})
    servers = []
    for instance in describe_instances(ec2, filters):
        if instance["InstanceId"] in listed:
            continue
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        name = tags.get("Name") or instance["InstanceId"]
        spec = ServerSpec(name, instance["InstanceId"], config["KEEP"])
        spec = with_consistency(spec, {}, config, "SELECT_TAGS")
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


def attach_elastic_ips(ec2: Any, servers: list[Server]) -> None:
    """Record each server's Elastic IP allocation, from one DescribeAddresses call."""
    by_id = {s.spec.instance_id: s for s in servers}
    for address in ec2.describe_addresses().get("Addresses", []):
        server = by_id.get(address.get("InstanceId", ""))
        if server and address.get("AllocationId"):
            server.eip = address["AllocationId"]


def to_image(raw: dict) -> Image:
    """Turn a DescribeImages entry into an Image."""
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    snapshots = [
        m["Ebs"]["SnapshotId"]
        for m in raw.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    ]
    return Image(
        image_id=raw["ImageId"],
        name=raw.get("Name", ""),
        state=raw["State"],
        created=parse_time(raw.get("CreationDate") or tags.get(TAG_CREATED, "")),
        server=tags.get(TAG_SERVER, ""),
        schedule=tags.get(TAG_SCHEDULE, ""),
        instance_id=tags.get(TAG_INSTANCE_ID, ""),
        snapshot_ids=snapshots,
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
    raw = paginate(ec2, "describe_images", "Images", Owners=["self"], Filters=filters)
    return [to_image(image) for image in raw]


# --- Do it ------------------------------------------------------------------------------


def create_backup(
    ec2: Any, server: Server, config: dict, now: datetime, out: Outcome, no_reboot: bool = True
) -> None:
    """Start CreateImage for one server, with every tag set at creation."""
    spec = server.spec
    name = render_name(config["NAME_FORMAT"], spec, config["SCHEDULE"], now)
    if not AMI_NAME_RE.match(name):
        out.error = f"NAME_FORMAT gives {name!r}, which is not a valid AMI name (3-128 chars)"
        return
    fixed = contract_tags(spec, config["SCHEDULE"], now, server.instance, server.eip)
    copied = instance_tags(server.instance) if config["COPY_INSTANCE_TAGS"] else []
    tags, dropped = backup_tags(fixed, {**config["TAGS"], **spec.tags}, copied)
    if dropped:
        out.warnings.append(f"50-tag limit: instance tags not copied: {', '.join(dropped)}")
    out.created_tag = stamp(now)
    try:
        response = ec2.create_image(
            InstanceId=spec.instance_id,
            Name=name,
            Description=f"{TOOL} {config['SCHEDULE']} backup of {spec.name} ({spec.instance_id})",
            NoReboot=no_reboot,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": tags},
                {"ResourceType": "snapshot", "Tags": tags},
            ],
        )
        out.image_id = response["ImageId"]
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DUPLICATE_NAME:
            raise
        adopt_duplicate(ec2, spec, config["SCHEDULE"], name, out)


def adopt_duplicate(ec2: Any, spec: ServerSpec, schedule: str, name: str, out: Outcome) -> None:
    """Take an existing image of this name as this run's backup, if this tool made it."""
    raw = list(
        paginate(
            ec2,
            "describe_images",
            "Images",
            Owners=["self"],
            Filters=[{"Name": "name", "Values": [name]}],
        )
    )
    tags = {t["Key"]: t["Value"] for image in raw for t in image.get("Tags", [])}
    ours = (
        tags.get(TAG_MANAGED) == TOOL
        and tags.get(TAG_INSTANCE_ID) == spec.instance_id
        and tags.get(TAG_SCHEDULE) == schedule
    )
    if raw and ours:
        out.image_id, out.created_tag = raw[0]["ImageId"], tags.get(TAG_CREATED, "")
        log.info("%s: image %s already exists as %s; using it", spec.name, name, out.image_id)
    else:
        owner = raw[0]["ImageId"] if raw else "an image this account cannot see"
        out.error = f"AMI name {name} is taken by {owner}, which is not this server's backup"


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


def follow_up(ec2: Any, created: queue.Queue, config: dict, settle: Any) -> None:
    """Verify each new image as it is created, with few polls, and settle each server once.

    A server is settled (handed to `settle`) when its image is available or
    failed, when its backup failed, or at the timeout; without WAIT, as soon
    as its image is created. `created` yields outcomes, then ALL_CREATED.
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
            deadline = time.monotonic() + config["WAIT_TIMEOUT_MINUTES"] * 60
        elif out is not None and out.image_id and not out.error and config["WAIT"]:
            waiting[out.image_id] = out
        elif out is not None:
            settle(out)
        if waiting and schedule.seconds_left() == 0:
            schedule.polled()
            poll_once(ec2, waiting, settle)
        if deadline is not None and waiting and time.monotonic() >= deadline:
            time_out(waiting, config["WAIT_TIMEOUT_MINUTES"], settle)


def time_out(waiting: dict[str, Outcome], minutes: float, settle: Any) -> None:
    """Fail every server whose image is still pending at the deadline."""
    for image_id in list(waiting):
        out = waiting.pop(image_id)
        out.error = f"image {image_id} still pending after {minutes:g} minutes"
        settle(out)


def poll_once(ec2: Any, waiting: dict[str, Outcome], settle: Any) -> None:
    """One DescribeImages for all waiting images; settle those that are done."""
    try:
        images = describe_run_images(ec2, sorted({o.created_tag for o in waiting.values()}))
    except (ClientError, BotoCoreError) as err:  # the next poll, or the timeout, decides
        log.warning("could not poll %d new image(s): %s", len(waiting), error_text(err))
        return
    for image_id in list(waiting):
        if settle_image(waiting[image_id], images.get(image_id)):
            settle(waiting.pop(image_id))


def describe_run_images(ec2: Any, stamps: list[str]) -> dict[str, Image]:
    """This run's images, found by their created tag: one call however many servers."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]},
        {"Name": f"tag:{TAG_CREATED}", "Values": stamps},
    ]
    images: dict[str, Image] = {}
    for raw in paginate(ec2, "describe_images", "Images", Owners=["self"], Filters=filters):
        image = to_image(raw)
        image.reason = raw.get("StateReason", {}).get("Message", "")
        images[image.image_id] = image
    return images


def settle_image(out: Outcome, image: Image | None) -> bool:
    """Record one polled image in its outcome; return whether it is settled."""
    if image is None:
        if out.image is None:
            return False  # not visible yet: EC2 is eventually consistent
        out.error = f"image {out.image_id} disappeared while pending"
        return True
    out.image = image
    if image.state == PENDING:
        return False
    if image.state != AVAILABLE:
        reason = image.reason or "no reason given"
        out.error = f"image {image.image_id} ended in state {image.state}: {reason}"
    return True


def deregister(ec2: Any, image: Image, out: Outcome) -> None:
    """Deregister one image and delete its snapshots, so none is orphaned."""
    response = ec2.deregister_image(ImageId=image.image_id, DeleteAssociatedSnapshots=True)
    results = {r["SnapshotId"]: r["ReturnCode"] for r in response.get("DeleteSnapshotResults", [])}
    for snapshot_id in image.snapshot_ids:
        code = results.get(snapshot_id)
        if code == SNAPSHOT_DELETED:
            continue
        if code == SNAPSHOT_SKIPPED:
            out.warnings.append(f"snapshot {snapshot_id} of {image.image_id} kept: in use")
            continue
        delete_snapshot(ec2, snapshot_id, image.image_id, out)


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
        out.warnings.append(f"snapshot {snapshot_id} of {image_id} kept: in use")


def prune(ec2: Any, doomed: list[tuple[Image, str]], out: Outcome) -> None:
    """Deregister the planned images of one server; an error fails that server."""
    for image, reason in doomed:
        try:
            deregister(ec2, image, out)
        except (ClientError, BotoCoreError) as err:
            out.error = f"could not deregister {image.image_id}: {error_text(err)}"
            return
        out.pruned.append(image.image_id)
        log.info("%s: deregistered %s (%s): %s", out.name, image.image_id, image.name, reason)


# --- Consistency through SSM: VSS on Windows, pre/post scripts anywhere ----------------------

SSM_ONLINE, SSM_SUCCESS = "Online", "Success"
SSM_RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}
DOC_SHELL, DOC_POWERSHELL, DOC_VSS = (
    "AWS-RunShellScript",
    "AWS-RunPowerShellScript",
    "AWSEC2-CreateVssSnapshot",
)
ERR_NO_INVOCATION = "InvocationDoesNotExist"  # just sent: not visible yet
SSM_IDS_MAX = 50  # instance ids per DescribeInstanceInformation filter
SSM_NEEDS = "SSM Agent running and an instance profile with AmazonSSMManagedInstanceCore"
VSS_NEEDS = "; for vss also the AwsVssComponents package and AWSEC2VssSnapshotPolicy"
VSS_TAG_ROOM = 3  # the VSS document adds AppConsistent and AwsVssConfig (Device on snapshots)


@dataclass
class Clients:
    """The AWS clients a run uses."""

    ec2: Any
    ssm: Any


def back_up(clients: Clients, server: Server, config: dict, now: datetime, out: Outcome) -> None:
    """Make one server's image the way its consistency asks."""
    mode = server.spec.consistency
    if mode == "scripts":
        backup_with_scripts(clients, server, config, now, out)
    elif mode == "vss":
        backup_with_vss(clients, server, config, now, out)
    else:
        create_backup(clients.ec2, server, config, now, out, no_reboot=mode == "crash")


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
                ssm, "describe_instance_information", "InstanceInformationList", Filters=filters
            ):
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
    clients: Clients, server: Server, config: dict, now: datetime, out: Outcome
) -> None:
    """Pre-script, then a no-reboot image, then the post-script, which runs whatever happened."""
    spec, timeout = server.spec, config["SCRIPT_TIMEOUT_SECONDS"]
    pre_sent = False
    try:
        if spec.pre_script:
            command_id = send_script(clients.ssm, server, spec.pre_script, timeout)
            pre_sent = True
            status = wait_command(clients.ssm, command_id, spec.instance_id, timeout)
            failure = f"pre-script command {command_id} {status}"
            if status != SSM_SUCCESS and not script_failed(out, failure, config):
                return
        create_backup(clients.ec2, server, config, now, out, no_reboot=True)
    finally:
        if spec.post_script and (pre_sent or not spec.pre_script):
            out.post_command = send_script(clients.ssm, server, spec.post_script, timeout)


def script_failed(out: Outcome, message: str, config: dict) -> bool:
    """Record a failed script; return whether to go on with a crash-consistent image."""
    if config["ON_SCRIPT_FAILURE"] == "crash":
        out.warnings.append(f"{message}; made a crash-consistent image instead")
        return True
    out.error = message
    return False


def backup_with_vss(
    clients: Clients, server: Server, config: dict, now: datetime, out: Outcome
) -> None:
    """AWSEC2-CreateVssSnapshot makes the image; then the rest of the tool's tags go on it."""
    spec, timeout = server.spec, config["SCRIPT_TIMEOUT_SECONDS"]
    if platform_of(server) != "windows":
        out.error = "consistency 'vss' needs a Windows instance; this one is linux"
        return
    name = render_name(config["NAME_FORMAT"], spec, config["SCHEDULE"], now)
    identity = contract_tags(spec, config["SCHEDULE"], now, {}, None)[:5]  # marker .. created
    if any(c in v for _, v in identity for c in ",;="):
        out.error = f"server name {spec.name!r} has ',', ';' or '=', which VSS tags cannot carry"
        return
    parameters = {
        "CreateAmi": ["True"], "AmiName": [name], "executionTimeout": [str(timeout)],
        "description": [f"{TOOL} {config['SCHEDULE']} VSS backup of {spec.name}"],
        "tags": [";".join(f"Key={k},Value={v}" for k, v in identity)],
    }  # fmt: skip
    command_id = send(clients.ssm, spec.instance_id, DOC_VSS, parameters, timeout)
    status = wait_command(clients.ssm, command_id, spec.instance_id, timeout)
    if status != SSM_SUCCESS:
        if script_failed(out, f"VSS command {command_id} {status}", config):
            create_backup(clients.ec2, server, config, now, out, no_reboot=True)
        return
    tag_vss_image(clients.ec2, server, config, now, name, out)
    out.created_tag = stamp(now)


def tag_vss_image(
    ec2: Any, server: Server, config: dict, now: datetime, name: str, out: Outcome
) -> None:
    """Find the image the VSS document made and give it and its snapshots the tool's tags."""
    found = list(paginate(ec2, "describe_images", "Images", Owners=["self"],
                          Filters=[{"Name": "name", "Values": [name]}]))  # fmt: skip
    if not found:
        out.error = f"the VSS command succeeded, but no image named {name} exists"
        return
    image = to_image(found[0])
    fixed = contract_tags(server.spec, config["SCHEDULE"], now, server.instance, server.eip)
    copied = instance_tags(server.instance) if config["COPY_INSTANCE_TAGS"] else []
    extra = {**config["TAGS"], **server.spec.tags}
    tags, dropped = backup_tags(fixed, extra, copied, limit=MAX_TAGS - VSS_TAG_ROOM)
    if dropped:
        out.warnings.append(f"50-tag limit: instance tags not copied: {', '.join(dropped)}")
    ec2.create_tags(Resources=[image.image_id, *image.snapshot_ids], Tags=tags)
    out.image_id = image.image_id


def check_post_scripts(ssm: Any, outcomes: list[Outcome], config: dict, since: datetime) -> None:
    """Wait for every post-script at once, with one ListCommands a poll; record failures."""
    invoked_after = [{"key": "InvokedAfter", "value": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]
    pending = {o.post_command: o for o in outcomes if o.post_command}
    deadline, delay = time.monotonic() + config["SCRIPT_TIMEOUT_SECONDS"] + POLL_MAX_SECONDS, 0.5
    while pending and time.monotonic() < deadline:
        for command in paginate(ssm, "list_commands", "Commands", Filters=invoked_after):
            out = pending.get(command["CommandId"])
            if out and command["Status"] not in SSM_RUNNING:
                if command["Status"] != SSM_SUCCESS:
                    out.post_error = (
                        f"post-script command {command['CommandId']} {command['Status']}"
                    )
                del pending[command["CommandId"]]
        if pending:
            time.sleep(delay)
            delay = min(delay * POLL_FACTOR, 5.0)
    for command_id, out in pending.items():
        out.post_error = f"post-script command {command_id} did not finish in time"


# --- The run -------------------------------------------------------------------------------


def run_backup(ec2: Any, ssm: Any, config: dict, args: argparse.Namespace) -> int:
    """Image every server; prune each as soon as its new image is verified; report."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    servers, failures = discover(ec2, config, args.server)
    check_requested(args.server, servers, failures)
    attach_elastic_ips(ec2, servers)
    existing = managed_images(ec2, config["SCHEDULE"])
    if args.dry_run:
        print_plan(servers, failures, existing, config, now)
        return EXIT_FAILED if failures else EXIT_OK
    outcomes = [Outcome(s.spec.name, s.spec.instance_id) for s in servers]
    created: queue.Queue[Outcome] = queue.Queue()
    creator_args = (Clients(ec2, ssm), servers, outcomes, config, now, created)
    threading.Thread(target=create_all, args=creator_args, daemon=True).start()
    keep = {s.spec.name: s.spec.keep for s in servers}
    retention = Retention(ec2, existing, keep, config["MAX_AGE_DAYS"], enabled=not args.no_prune)
    pruner = Pruner(retention)
    follow_up(ec2, created, config, pruner.submit)
    pruner.finish()
    return report(outcomes + failures)


def create_all(
    clients: Clients, servers: list[Server], outcomes: list[Outcome], config: dict, now: datetime,
    created: queue.Queue,
) -> None:  # fmt: skip
    """Start every server's image in turn (the client paces CreateImage); queue each outcome.

    Servers backed up through SSM come last, after one check that they are online,
    so their scripts never hold up the plain ones.
    """
    pairs = sorted(
        zip(servers, outcomes, strict=True), key=lambda p: p[0].spec.consistency in SSM_MODES
    )
    try:
        offline = ssm_offline(clients.ssm, [s for s, _ in pairs if s.spec.consistency in SSM_MODES])
        for server, out in pairs:
            try:
                out.error = offline.get(server.spec.instance_id)
                if not out.error:
                    guarded(out, "backup failed", back_up, clients, server, config, now, out)
            except Exception as err:  # a bug must not hide a server: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                out.error = f"backup failed: unexpected {type(err).__name__}: {err}"
            created.put(out)
        check_post_scripts(clients.ssm, [o for _, o in pairs], config, now)
    finally:
        created.put(ALL_CREATED)


def guarded(out: Outcome, what: str, func: Any, *args: Any) -> None:
    """Run one server's step; an AWS error fails that server only."""
    try:
        func(*args)
    except (ClientError, BotoCoreError) as err:
        out.error = f"{what}: {error_text(err)}"


def check_requested(only: list[str], servers: list[Server], failures: list[Outcome]) -> None:
    """Every --server NAME given must have resolved to something."""
    known = {s.spec.name for s in servers} | {f.name for f in failures}
    for name in only or []:
        if name not in known:
            failures.append(Outcome(name, "-", error="no such server in SERVERS or SELECT_TAGS"))


class Retention:
    """Prunes one server at a time, as each is settled in the run."""

    def __init__(self, ec2: Any, existing: list[Image], keep: dict[str, int],
                 max_age_days: float | None, enabled: bool) -> None:  # fmt: skip
        self.ec2, self.existing, self.keep = ec2, existing, keep
        self.max_age_days, self.enabled = max_age_days, enabled

    def apply(self, out: Outcome) -> None:
        """Apply retention to a server; one whose backup failed loses only failed images."""
        if not self.enabled:
            return
        images = {i.image_id: i for i in self.existing if i.server == out.name}
        if out.image:
            images[out.image.image_id] = out.image
        now = datetime.now(timezone.utc)
        doomed = plan_prune(list(images.values()), self.keep[out.name], self.max_age_days, now)
        if out.error:
            doomed = [(image, reason) for image, reason in doomed if image.state == FAILED]
        prune(self.ec2, doomed, out)


class Pruner:
    """Applies retention to each settled server in a thread of its own.

    So deregistrations, paced by their own EC2 bucket, run side by side with
    the creates and never hold up the polls.
    """

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.queue: queue.Queue[Outcome | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, out: Outcome) -> None:
        """Prune this server when the thread gets to it."""
        self.queue.put(out)

    def finish(self) -> None:
        """Wait until every submitted server is pruned."""
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (out := self.queue.get()) is not None:
            try:
                self.retention.apply(out)
            except Exception as err:  # a bug must not hide a server: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                out.error = f"pruning failed: unexpected {type(err).__name__}: {err}"


def report(outcomes: list[Outcome]) -> int:
    """Log one line per server and a summary; return the exit code."""
    for out in outcomes:
        if not out.error and not out.image_id:
            out.error = "no backup was made"  # never report a server as done without an image
        if out.post_error:
            out.error = f"{out.error}; {out.post_error}" if out.error else out.post_error
    for out in outcomes:
        for warning in out.warnings:
            log.warning("%s (%s): %s", out.name, out.instance_id, warning)
        if out.error:
            log.error("%s (%s): FAILED: %s", out.name, out.instance_id, out.error)
        else:
            pruned = f"; pruned {', '.join(out.pruned)}" if out.pruned else ""
            log.info("%s (%s): backed up as %s%s", out.name, out.instance_id, out.image_id, pruned)
    failed = [o for o in outcomes if o.error]
    level = logging.ERROR if failed else logging.INFO
    log.log(
        level,
        "%d server(s): %d backed up, %d failed",
        len(outcomes),
        len(outcomes) - len(failed),
        len(failed),
    )
    return EXIT_FAILED if failed else EXIT_OK


# --- Dry run and listing -----------------------------------------------------------------


def print_plan(
    servers: list[Server],
    failures: list[Outcome],
    existing: list[Image],
    config: dict,
    now: datetime,
) -> None:
    """Print what a run would do, assuming every new backup succeeds."""
    for server in servers:
        spec = server.spec
        name = render_name(config["NAME_FORMAT"], spec, config["SCHEDULE"], now)
        mode = CONSISTENCY_WORDS[spec.consistency]
        print(f"Would create image {name} of {spec.instance_id} ({spec.name}, {mode})")
        images = [i for i in existing if i.server == spec.name]
        assumed = Image("(new)", name, AVAILABLE, now, spec.name, config["SCHEDULE"])
        for image, reason in plan_prune([*images, assumed], spec.keep, config["MAX_AGE_DAYS"], now):
            print(f"Would deregister {image.image_id} ({image.name}) of {spec.name}: {reason}")
    for out in failures:
        print(f"Would fail {out.name} ({out.instance_id}): {out.error}")


def list_backups(ec2: Any, only: list[str]) -> int:
    """Print a table of managed backups per server, newest first."""
    images = [i for i in managed_images(ec2, None) if not only or i.server in only]
    images.sort(key=lambda i: (i.server, -i.created.timestamp()))
    rows = [("SERVER", "IMAGE", "NAME", "CREATED", "STATE", "SCHEDULE")]
    for i in images:
        created = i.created.strftime("%Y-%m-%d %H:%M:%S")
        rows.append((i.server, i.image_id, i.name, created, i.state, i.schedule))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if not images:
        print("(no managed backups)")
    return EXIT_OK


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
    parser.add_argument("--server", action="append", metavar="NAME", help="only this server")
    parser.add_argument("--no-prune", action="store_true", help="create backups, delete nothing")
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
    if args.cron and (args.list or args.dry_run or args.no_prune or args.server):
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


@contextmanager
def run_lock(config_path: str) -> Iterator[bool]:
    """Hold an exclusive lock per config file; yield False if another run holds it."""
    digest = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"ec2_to_ami-{digest}.lock")
    with open(path, "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """Load the config, take the lock, then list, plan or run the backup."""
    args = parse_args(argv)
    setup_logging(args)
    try:
        config = load_config(args.config)
        setup_logging(args, config["LOG_FILE"])
        if args.install_cron:
            check_cron_schedule(args.install_cron)
        if args.cron:
            return manage_cron(args)
        if args.server and not config["SELECT_TAGS"]:
            names = {s.name for s in config["SERVERS"]}
            unknown = [n for n in args.server if n not in names]
            if unknown:
                raise ConfigError(f"--server {unknown[0]}: not in SERVERS ({', '.join(names)})")
        ec2, ssm = make_clients(config)
    except ConfigError as err:
        log.error("config error: %s", err)
        return EXIT_USAGE
    except OSError as err:
        log.error("config error: LOG_FILE: %s", err)
        return EXIT_USAGE
    except CronError as err:
        log.error("%s", err)
        return EXIT_FAILED
    with run_lock(args.config) as locked:
        if not locked:
            log.error("another run of %s is still going; nothing done", args.config)
            return EXIT_LOCKED
        try:
            if args.list:
                return list_backups(ec2, args.server)
            return run_backup(ec2, ssm, config, args)
        except (ClientError, BotoCoreError) as err:
            log.error("AWS error: %s", error_text(err), exc_info=args.verbose > 0)
            return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
