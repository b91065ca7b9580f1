"""What the backup recorded: the tag contract and the launch record, read from an image."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ec2ami.contract import (
    INTERFACE_DEFAULTS,
    LAUNCH_DEFAULTS,
    LAUNCH_VERSION,
    TAG_CREATED,
    TAG_ELASTIC_IP,
    TAG_HTTP_TOKENS,
    TAG_INSTANCE_ID,
    TAG_INSTANCE_PROFILE,
    TAG_INSTANCE_TAG_KEYS,
    TAG_INSTANCE_TYPE,
    TAG_KEY_NAME,
    TAG_LAUNCH,
    TAG_PLATFORM,
    TAG_POOL,
    TAG_PRIVATE_IP,
    TAG_SCHEDULE,
    TAG_SECURITY_GROUPS,
    TAG_SELECT_TAG_KEYS,
    TAG_SERVER,
    TAG_SOURCE_REGION,
    TAG_SUBNET,
    joined_value,
)


@dataclass
class Recorded:
    """The original instance's configuration, as the backup recorded it on the image."""

    server: str | None = None
    schedule: str | None = None
    pool: str | None = None
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

    def value(key: str) -> str | None:
        return joined_value(tags, key)

    keys = json.loads(value(TAG_INSTANCE_TAG_KEYS) or "[]")
    platform = value(TAG_PLATFORM) or ("windows" if image.get("Platform") == "windows" else None)
    recorded = Recorded(
        server=value(TAG_SERVER),
        schedule=value(TAG_SCHEDULE),
        pool=value(TAG_POOL),
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
