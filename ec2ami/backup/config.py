"""The backup's config: read the module, check every setting before any AWS call, and
return a frozen BackupConfig. Every message names the setting.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ec2ami.backup.naming import check_name_format, server_name_problem
from ec2ami.contract import LAUNCH_TAGS_MAX, MAX_TAGS, TAG_KEY_MAX, TAG_PREFIX, TAG_VALUE_MAX
from ec2ami.errors import ConfigError
from ec2ami.facts import (
    ACCOUNT_RE,
    COPY_OPTIONS,
    INSTANCE_ID_RE,
    POOL_BAD_CHARS,
    REGION_RE,
    ROLE_ARN_RE,
    SCHEDULE_RE,
    SHARE_ACCOUNTS_MAX,
    SSM_DOCUMENT_RE,
)
from ec2ami.settings import check_api_limits, check_key_arns, read_settings

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
    "SSM_DOCUMENT": None,
    "SCRIPT_TIMEOUT_SECONDS": 300,
    "ON_SCRIPT_FAILURE": "fail",
    "COPY_TO_REGIONS": {},
    "BACKUP_KMS_KEYS": [],
    "EC2_API_LIMITS": {},
    "SHARE_WITH_ACCOUNTS": [],
    "DEPRECATE_AFTER_DAYS": None,
    "ROLE_ARN": None,
    "POOL": None,
    "ADOPT_INSTANCES": {},
    "TAG_WRITERS": [],
    "CHECK_IMAGE_REFERENCES": True,
    "TRUST_TAGS_BEFORE": None,
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
# Contract tags a single image can carry, counting continuation tags generously.
CONTRACT_TAGS_MAX = 23 + LAUNCH_TAGS_MAX
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
    adopt_instances: Mapping[str, tuple[str, ...]]  # server -> its earlier instances
    trust_tags_before: datetime | None  # images EC2 made before this: trusted by their tags
    tag_writers: tuple[str, ...]  # the roles the tag guard lets write the tool's tags
    check_image_references: bool  # keep an image a template, instance or parameter uses
    max_age_days: float | None
    name_format: str
    tags: Mapping[str, str]
    copy_instance_tags: bool
    record_load_balancers: bool
    wait: bool
    wait_timeout_minutes: float
    script_timeout_seconds: int
    on_script_failure: str  # "fail" or "crash"
    ssm_document: str | None  # the config's own Command document for its scripts
    copy_to_regions: Mapping[str, CopyTarget]
    backup_kms_keys: tuple[str, ...]  # customer managed keys of the servers' volumes
    ec2_api_limits: Mapping[str, tuple[float, float]]  # raised EC2 buckets, by API
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

    @property
    def config_id(self) -> str:
        """This config on this host, in TAG_KEEP: its STATE_FILE is per file and user."""
        where = f"{socket.gethostname()}:{self.state_file or self.pool}"
        return hashlib.sha256(where.encode()).hexdigest()[:12]

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
    settings = read_settings(path, DEFAULTS)
    if settings.get("POOL") is None:
        settings["POOL"] = default_pool(path)
    if settings.get("STATE_FILE") is None:
        settings["STATE_FILE"] = default_state_file(path)
    return validate_config(settings)


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
    """Check every setting's name, type and range; return them, with defaults, as a BackupConfig.

    Long because it reads the settings once, in the template's order, into the one
    constructor call; each check it makes is a short function below.
    """
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
    if settings["STATE_FILE"] and os.path.isdir(settings["STATE_FILE"]):
        raise ConfigError(f"STATE_FILE {settings['STATE_FILE']} is a directory; name a file")
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
                 "DEREGISTRATION_PROTECTION", "CHECK_IMAGE_REFERENCES"):  # fmt: skip
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
    scripted = any(s.consistency == "scripts" for s in servers) or (
        settings["SELECT_TAGS"] and defaults.consistency == "scripts"
    )
    if settings["SSM_DOCUMENT"] and not scripted:
        raise ConfigError("SSM_DOCUMENT holds the scripts of CONSISTENCY 'scripts', which no "
                          "server of this config uses")  # fmt: skip
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
        adopt_instances=check_adopted(settings["ADOPT_INSTANCES"]),
        trust_tags_before=check_trust_before(settings["TRUST_TAGS_BEFORE"]),
        tag_writers=check_tag_writers(settings["TAG_WRITERS"]),
        check_image_references=settings["CHECK_IMAGE_REFERENCES"],
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
        backup_kms_keys=tuple(settings["BACKUP_KMS_KEYS"]),
        ec2_api_limits=MappingProxyType(dict(settings["EC2_API_LIMITS"])),
        ssm_document=settings["SSM_DOCUMENT"],
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


def check_adopted(adopted: Any) -> Mapping[str, tuple[str, ...]]:
    """ADOPT_INSTANCES: {server name: [instance ids]}, the instances a server replaced."""
    if not isinstance(adopted, dict) or not all(
        isinstance(name, str) and isinstance(ids, (list, tuple)) for name, ids in adopted.items()
    ):
        raise ConfigError(
            "ADOPT_INSTANCES must be a dict of server name -> list of instance ids, such as "
            '{"web01": ["i-0123456789abcdef0"]}'
        )
    for name, ids in adopted.items():
        for instance_id in ids:
            if not isinstance(instance_id, str) or not INSTANCE_ID_RE.match(instance_id):
                raise ConfigError(f"ADOPT_INSTANCES[{name!r}]: {instance_id!r} is no instance id")
    return MappingProxyType({name: tuple(ids) for name, ids in adopted.items()})


def check_tag_writers(writers: Any) -> tuple[str, ...]:
    """TAG_WRITERS: IAM role ARNs."""
    if not isinstance(writers, (list, tuple)) or not all(
        isinstance(w, str) and ROLE_ARN_RE.match(w) for w in writers
    ):
        raise ConfigError(f"TAG_WRITERS must be a list of IAM role ARNs, not {writers!r}")
    return tuple(writers)


def check_trust_before(value: Any) -> datetime | None:
    """TRUST_TAGS_BEFORE: None, or an ISO 8601 time with its zone."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        when = None
    if not isinstance(value, str) or when is None or when.tzinfo is None:
        raise ConfigError(
            f"TRUST_TAGS_BEFORE must be None or a time with its zone, such as "
            f'"2026-12-01T00:00Z", not {value!r}'
        )
    return when


def check_consistency_settings(settings: dict) -> None:
    """CONSISTENCY, the scripts, their timeout and ON_SCRIPT_FAILURE."""
    if settings["CONSISTENCY"] not in (None, *CONSISTENCY_MODES):
        raise ConfigError(f"CONSISTENCY must be None or one of {', '.join(CONSISTENCY_MODES)}")
    _check_optional_str(settings, "PRE_SCRIPT")
    _check_optional_str(settings, "POST_SCRIPT")
    _check_int(settings, "SCRIPT_TIMEOUT_SECONDS", minimum=SCRIPT_TIMEOUT_MIN)
    if settings["ON_SCRIPT_FAILURE"] not in ("fail", "crash"):
        raise ConfigError("ON_SCRIPT_FAILURE must be 'fail' or 'crash'")
    _check_optional_str(settings, "SSM_DOCUMENT", SSM_DOCUMENT_RE,
                        "a document name of 3-128 letters, digits, '_', '-' or '.', not "
                        "starting with aws, amazon or amzn")  # fmt: skip
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
    check_key_arns(settings, "BACKUP_KMS_KEYS")
    check_api_limits(settings, "EC2_API_LIMITS")
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


def _check_optional_str(
    settings: dict, name: str, pattern: re.Pattern[str] | None = None, example: str = ""
) -> None:
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
    problem = server_name_problem(name)
    if problem:
        raise ConfigError(f"{where}: 'name' {problem}")
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
