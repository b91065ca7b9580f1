"""The twin's override settings of the restore config, checked: every attribute a setting
can change (tenancy, placement, CPU, IMDS, DNS names, interfaces, load balancers, DNS
records). Each message names the setting.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ec2ami.errors import ConfigError
from ec2ami.facts import GROUP_ID_RE, SUBNET_ID_RE
from ec2ami.settings import check_enum

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
    check_enum(config, "TENANCY", TENANCIES)
    check_enum(config, "SHUTDOWN_BEHAVIOR", (None, "stop", "terminate"))
    check_enum(config, "AUTO_RECOVERY", (None, "default", "disabled"))
    check_enum(config, "CREDIT_SPECIFICATION", (None, "standard", "unlimited"))
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


def check_group_ids(groups: Any) -> None:
    """SECURITY_GROUP_IDS: None or a non-empty list of sg- ids."""
    if groups is None:
        return
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ConfigError(f"SECURITY_GROUP_IDS must be None or a list of sg- ids, not {groups!r}")
    for group in groups:
        if not isinstance(group, str) or not GROUP_ID_RE.match(group):
            raise ConfigError(f"SECURITY_GROUP_IDS: {group!r} is not a security group id")


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
