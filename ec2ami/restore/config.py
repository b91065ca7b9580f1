"""The restore's config: read the module, apply the flags, and check every setting before
any AWS call. Every message names the setting.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ec2ami.errors import ConfigError
from ec2ami.facts import (
    ALLOCATION_ID_RE,
    AMI_ID_RE,
    CHECK_DOCUMENTS,
    DRILL_PICKS,
    HOST_LABEL_RE,
    INITIALIZATION_RATES,
    INSTANCE_ID_RE,
    REGION_RE,
    ROLE_ARN_RE,
    SUBNET_ID_RE,
    USER_DATA_MAX,
    VOLUME_TYPES,
    WAIT_MODES,
)
from ec2ami.restore.twin_settings import check_group_ids, check_private_ip, check_twin_settings
from ec2ami.settings import (
    check_api_limits,
    check_choice,
    check_enum,
    check_key_arns,
    check_pattern,
    read_settings,
)

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
    "BACKUP_KMS_KEYS": [],
    "EC2_API_LIMITS": {},
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
    "DRILL_PLACEMENT": False,
    "IN_PLACE": False,
    "INSTANCE_ID": None,
}


@dataclass(frozen=True)
class RestoreConfig:
    """The restore's settings after every check, and the flags: read by attribute, never changed.

    One field per setting of ami_to_ec2_config.py (lower case), then what the command line
    decides: all (--all), drill (--drill), fleet (several servers), and for a drill's
    restores the drill's stamp and run token.
    """

    region: str | None
    profile: str | None
    server: str | None
    servers: list[str] | None
    ami_id: str | None
    schedule: str | None
    pool: str | None
    backup_before: datetime | None
    count: int
    instance_type: str | None
    subnet_id: str | None
    security_group_ids: list[str] | None
    key_name: str | None
    iam_instance_profile: str | None
    allowed_instance_profiles: list[str] | None
    private_ip: str | None
    elastic_ip: str | None
    allow_reassociation: bool
    hostname: str | None
    user_data: str | None
    name: str | None
    tags: dict[str, str]
    termination_protection: bool | None
    stop_protection: bool | None
    shutdown_behavior: str | None
    monitoring: bool | None
    ebs_optimized: bool | None
    auto_recovery: str | None
    imdsv2: str | None
    metadata_options: dict[str, Any] | None
    private_dns_name_options: dict[str, Any] | None
    tenancy: str | None
    placement_group: Any
    host_id: Any
    cpu_options: Any
    credit_specification: str | None
    network_interfaces: list[dict] | None
    public_ip: bool | None
    target_groups: Any
    classic_load_balancers: Any
    dns_records: list[dict]
    volume_type: str | None
    encrypted: bool | None
    kms_key_id: str | None
    backup_kms_keys: list[str]
    ec2_api_limits: dict[str, Any]
    delete_on_termination: bool | None
    volume_initialization_rate: int | None
    wait: str
    wait_timeout_minutes: float
    region_map: dict[str, dict[str, str]]
    role_arn: str | None
    drill_subnet_id: str | None
    drill_security_group_ids: list[str] | None
    drill_instance_type: str | None
    drill_check: dict[str, str] | None
    drill_timeout_minutes: float
    drill_pick: str
    drill_log: str | None
    drill_placement: bool
    in_place: bool
    instance_id: str | None
    all: bool = False
    drill: bool = False
    fleet: bool = False
    drill_stamp: str | None = None
    drill_run: str | None = None
    drill_deadline: str | None = None


class RestoreError(Exception):
    """A problem found before launching; nothing was launched."""


def load_config(path: str) -> dict[str, Any]:
    """Read a config file's UPPER_CASE settings (not yet validated)."""
    settings = read_settings(path, DEFAULTS)
    for name in settings:
        if name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown setting {name}{hint}")
    return {**DEFAULTS, **settings}


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
    if getattr(args, "in_place", False):
        config["IN_PLACE"] = True
    if getattr(args, "instance_id", None) is not None:
        config["INSTANCE_ID"] = args.instance_id
    if args.before is not None:
        config["BACKUP_BEFORE"] = args.before
    if args.pool is not None:
        config["POOL"] = args.pool
    if args.count is not None:
        config["COUNT"] = args.count
    if args.region is not None:
        config["REGION"] = args.region
    if getattr(args, "profile", None) is not None:
        config["PROFILE"] = args.profile
    for flag, value, setting in (("--subnet-id", args.subnet_id, "DRILL_SUBNET_ID"),
                                 ("--security-group-ids", args.security_group_ids,
                                  "DRILL_SECURITY_GROUP_IDS")):  # fmt: skip
        if value is not None and args.drill:
            raise ConfigError(f"{flag} does not apply to a drill: a drill launches with "
                              f"{setting}; set that in the config")  # fmt: skip
    if args.subnet_id is not None:
        config["SUBNET_ID"] = args.subnet_id
    if args.security_group_ids is not None:
        config["SECURITY_GROUP_IDS"] = [g for g in args.security_group_ids.split(",") if g]
    return config


def validate_config(config: dict, listing: bool = False) -> RestoreConfig:
    """Check every setting; return them, parsed, as a RestoreConfig.

    Long because it reads the settings once, in the template's order; each check it
    makes is a short function below.
    """
    check_choice(config, "SERVER", str)
    check_pattern(config, "AMI_ID", AMI_ID_RE, "an image id such as ami-0123456789abcdef0")
    check_servers(config["SERVERS"])
    config.setdefault("ALL", False)
    config.setdefault("DRILL", False)
    chosen = [bool(config["SERVER"]), bool(config["AMI_ID"]), config["SERVERS"] is not None,
              bool(config["ALL"])]  # fmt: skip
    if not listing and sum(chosen) != 1:
        raise ConfigError("set exactly one of SERVER, SERVERS and AMI_ID (or --server, --all "
                          "or --ami)")  # fmt: skip
    config["FLEET"] = config["SERVERS"] is not None or bool(config["ALL"])
    check_pattern(config, "REGION", REGION_RE, "a region such as eu-west-1")
    check_pattern(config, "ROLE_ARN", ROLE_ARN_RE, "an IAM role ARN")
    check_region_map(config["REGION_MAP"])
    for name in (
        "PROFILE",
        "SCHEDULE",
        "POOL",
        "INSTANCE_TYPE",
        "KEY_NAME",
        "IAM_INSTANCE_PROFILE",
    ):
        check_choice(config, name, str)
    for name in ("NAME", "KMS_KEY_ID"):
        check_choice(config, name, str)
    check_key_arns(config, "BACKUP_KMS_KEYS")
    check_api_limits(config, "EC2_API_LIMITS")
    check_pattern(config, "SUBNET_ID", SUBNET_ID_RE, "a subnet id")
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
    check_pattern(config, "INSTANCE_ID", INSTANCE_ID_RE, "an instance id such as i-0123...")
    if config["IN_PLACE"] and (config["FLEET"] or config["DRILL"]):
        raise ConfigError("IN_PLACE (--in-place) restores one server: not with SERVERS, --all "
                          "or --drill")  # fmt: skip
    for name in ("ALLOW_REASSOCIATION", "DRILL_PLACEMENT", "IN_PLACE"):
        if not isinstance(config[name], bool):
            raise ConfigError(f"{name} must be True or False, not {config[name]!r}")
    check_twin_settings(config)
    for name in ("ENCRYPTED", "DELETE_ON_TERMINATION", "TERMINATION_PROTECTION", "STOP_PROTECTION",
                 "MONITORING", "EBS_OPTIMIZED", "PUBLIC_IP"):  # fmt: skip
        if config[name] is not None and not isinstance(config[name], bool):
            raise ConfigError(f"{name} must be None, True or False, not {config[name]!r}")
    check_volume_settings(config)
    check_enum(config, "IMDSV2", (None, "required", "optional"))
    check_enum(config, "WAIT", WAIT_MODES)
    for name in ("WAIT_TIMEOUT_MINUTES", "DRILL_TIMEOUT_MINUTES"):
        minutes = config[name]
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
            raise ConfigError(f"{name} must be a number > 0, not {minutes!r}")
    check_drill_settings(config)
    if config["FLEET"] and not listing:
        check_fleet_settings(config)
    return RestoreConfig(**{name.lower(): value for name, value in config.items()})


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
    check_pattern(config, "DRILL_SUBNET_ID", SUBNET_ID_RE, "a subnet id")
    groups = config["DRILL_SECURITY_GROUP_IDS"]
    if groups is not None:
        try:
            check_group_ids(groups)
        except ConfigError as err:
            message = str(err).replace("SECURITY_GROUP_IDS", "DRILL_SECURITY_GROUP_IDS")
            raise ConfigError(message) from None
    check_choice(config, "DRILL_INSTANCE_TYPE", str)
    check_choice(config, "DRILL_LOG", str)
    check_enum(config, "DRILL_PICK", DRILL_PICKS)
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
    text = value
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise ConfigError(f"USER_DATA: cannot read {value[1:]}: {err.strerror}") from None
    size = len(text.encode())
    if size > USER_DATA_MAX:
        raise ConfigError(f"USER_DATA is {size} bytes; EC2 takes at most {USER_DATA_MAX} (16 KB)")
    return text


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
