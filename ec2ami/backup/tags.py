"""The tags the backup writes at creation: the contract, the server's own tags, and the
launch record (everything the instance ran with), within EC2's 50-tag limit.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from ec2ami.contract import (
    LAUNCH_TAGS_MAX,
    MAX_TAGS,
    TAG_CREATED,
    TAG_ELASTIC_IP,
    TAG_HTTP_TOKENS,
    TAG_INSTANCE_ID,
    TAG_INSTANCE_PROFILE,
    TAG_INSTANCE_TAG_KEYS,
    TAG_INSTANCE_TYPE,
    TAG_KEEP,
    TAG_KEY_NAME,
    TAG_LAUNCH,
    TAG_MANAGED,
    TAG_PLATFORM,
    TAG_POOL,
    TAG_PREFIX,
    TAG_PRIVATE_IP,
    TAG_RUN,
    TAG_SCHEDULE,
    TAG_SECURITY_GROUPS,
    TAG_SELECT_TAG_KEYS,
    TAG_SERVER,
    TAG_SUBNET,
    TAG_VALUE_MAX,
    TOOL,
    split_value,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ec2ami.backup.config import BackupConfig, ServerSpec

log = logging.getLogger(__name__)


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
        (TAG_KEEP, f"{server.keep}@{config.config_id}"),
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
    """The record with each interface's secondary private IPs as a count, except where an
    Elastic IP sits on one: that interface keeps its exact addresses, so the restore puts
    each Elastic IP back on its own address."""
    elastic = {(e["index"], e["ip"]) for e in record.get("elastic_ips", [])}
    nics = [
        {**{k: v for k, v in n.items() if k != "secondary"}, "secondary_count": len(n["secondary"])}
        if n.get("secondary") and not {(n["index"], ip) for ip in n["secondary"]} & elastic
        else n
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


def instance_tags(instance: dict, select_keys: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The instance's own tags worth copying: Name, then the tags the backup selects
    servers by (SELECT_TAGS), then by key. When EC2's 50 tags cannot hold them all, the
    last give way, so a restored server is always selected by the next backup."""
    own = [
        (t["Key"], t["Value"])
        for t in instance.get("Tags", [])
        if not t["Key"].lower().startswith(("aws:", TAG_PREFIX))
    ]
    first = set(select_keys)
    return sorted(own, key=lambda kv: (kv[0] != "Name", kv[0] not in first, kv[0]))


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


VSS_TAG_ROOM = 3  # the VSS document adds AppConsistent and AwsVssConfig (Device on snapshots)
