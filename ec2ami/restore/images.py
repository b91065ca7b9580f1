"""Find the backup: the server's newest usable image (or the one asked for), one brought
back from the Recycle Bin, and whether the original instance still lives.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami import polling
from ec2ami.aws import chunked, error_text, paginate
from ec2ami.contract import (
    TAG_DRILL,
    TAG_INSTANCE_ID,
    TAG_MANAGED,
    TAG_POOL,
    TAG_RESTORED_FROM,
    TAG_RESTORED_POOL,
    TAG_RESTORED_SERVER,
    TAG_SCHEDULE,
    TAG_SERVER,
    TAG_SOURCE_IMAGE,
    TOOL,
    joined_value,
)
from ec2ami.facts import (
    AVAILABLE,
    BIN_RESTORE_SECONDS,
    CLOCK_SKEW,
    DISABLED,
    FILTER_VALUES_MAX,
    GONE_STATES,
    IN_RECYCLE_BIN,
    LIVE_INSTANCE_STATES,
    NOT_FOUND_CODES,
)
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.model import Restore, one_server
from ec2ami.restore.recorded import read_recorded

if TYPE_CHECKING:
    from ec2ami.restore.recorded import Recorded

log = logging.getLogger(__name__)


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


def look_alike(image: dict) -> str | None:
    """Why an image that wears a backup's tags is not the backup they describe, by what
    EC2 records and no tag can change; None if nothing contradicts them. A created tag
    after CreationDate (a copy's CreationDate is later still); a native image made from
    another instance than its tag names (SourceInstanceId); a copy of another image than
    its tag names (SourceImageId). EC2 reports neither source for images made before it
    began to: absent is no contradiction."""
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    made = parse_time(image.get("CreationDate"))
    claimed = parse_time(read_recorded(image).created)
    if claimed and made and claimed > made + CLOCK_SKEW:
        return f"its created tag is after EC2's CreationDate ({image['CreationDate']})"
    if tags.get(TAG_SOURCE_IMAGE):
        source = image.get("SourceImageId")
        if source and source != tags[TAG_SOURCE_IMAGE]:
            return f"EC2 says it was copied from {source}"
    elif image.get("SourceInstanceId") and image["SourceInstanceId"] != tags.get(TAG_INSTANCE_ID):
        return f"EC2 says it was made from {image['SourceInstanceId']}"
    return None


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time with a zone, or None."""
    try:
        when = datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else None


def backup_time(image: dict) -> datetime:
    """When the backup was taken: its created tag (a copy's CreationDate is the copy's)."""
    when = parse_time(read_recorded(image).created or image.get("CreationDate"))
    return when or datetime.min.replace(tzinfo=timezone.utc)


def find_image(ec2: Any, config: RestoreConfig) -> dict:
    """AMI_ID's image; a disabled one too (the restore enables it), or one in the Recycle
    Bin (the restore brings it back)."""
    what = f"image {config.ami_id}"
    try:
        image = describe(
            ec2, what, "describe_images", "Images", ImageIds=[config.ami_id],
            IncludeDisabled=True,
        )[0]  # fmt: skip
    except RestoreError:
        binned = list(paginate_bin(ec2, ImageIds=[config.ami_id]))
        if not binned:
            raise
        return {**binned[0], "State": IN_RECYCLE_BIN}
    if image["State"] not in (AVAILABLE, DISABLED):
        raise RestoreError(f"image {image['ImageId']} is {image['State']}, not available")
    return image


def pick_images(ec2: Any, config: RestoreConfig) -> list[Restore]:
    """Each server's backup to restore, from one DescribeImages for them all: SERVER,
    SERVERS, or (--all) every server with a backup here."""
    names = [config.server] if config.server else config.servers
    images = managed_images(ec2, names, config.schedule, config.pool)
    by_server: dict[str, list[dict]] = {}
    for image in images:
        why = look_alike(image)
        if why:
            log.warning("image %s carries the backup tags of server %r, but %s: it is not "
                        "restored; name it with --ami to restore it anyway", image["ImageId"],
                        read_recorded(image).server, why)  # fmt: skip
            continue
        by_server.setdefault(read_recorded(image).server or "", []).append(image)
    if names is None:  # every server with a backup: one with none usable fails, saying why
        if not any(s and usable(found, config) for s, found in by_server.items()):
            raise RestoreError(no_backup_message(ec2, config, "any server"))
        names = sorted(s for s in by_server if s)
    restores = []
    for name in names:
        restore = Restore(name)
        with one_server(restore, config.fleet):
            restore.image = pick_image(ec2, config, name, by_server.get(name, []))
        restores.append(restore)
    return restores


def usable(images: list[dict], config: RestoreConfig) -> list[dict]:
    """The available backups at or before BACKUP_BEFORE, newest first."""
    before = config.backup_before
    return [
        i
        for i in images
        if i["State"] == AVAILABLE and (before is None or backup_time(i) <= before)
    ]


def pick_image(ec2: Any, config: RestoreConfig, server: str, images: list[dict]) -> dict:
    """The server's newest available backup (a newer disabled one is named in a warning);
    for a drill with DRILL_PICK = "random", any available one, so old ones are tested too."""
    found = usable(images, config)
    before = config.backup_before
    newer = [
        i["ImageId"]
        for i in images
        if i["State"] == DISABLED
        and (before is None or backup_time(i) <= before)
        and (not found or backup_time(i) > backup_time(found[0]))
    ]
    if newer and found:
        log.warning(
            "newer backups of %s are disabled: %s; to restore one, name it with --ami "
            "(the restore enables it first)", server, ", ".join(newer),
        )  # fmt: skip
    if not found:
        what = f"server {server!r}"
        raise RestoreError(
            f"server {server!r} has only disabled backups ({', '.join(newer)}); to "
            "restore one, name it with --ami (the restore enables it first)"
            if newer else
            no_backup_message(ec2, config, what) if not config.fleet
            else f"no available backup of {what}{backup_scope(config)}"
        )  # fmt: skip
    groups = pools_by_instance(found, images)
    if len(groups) > 1:
        pools = sorted(p for group in groups for p in group)
        which = "; ".join(f"{', '.join(sorted(g))}: {', '.join(sorted(i))}"
                          for g, i in sorted(groups.items()))  # fmt: skip
        raise RestoreError(
            f"server {server!r} has backups in several pools ({', '.join(pools)}) of "
            f"different instances ({which}): backup configs that each have a server of that "
            "name; choose one with POOL (or --pool)"
        )
    if config.drill and config.drill_pick == "random":
        return random.SystemRandom().choice(found)
    return found[0]


def pools_by_instance(found: list[dict], images: list[dict]) -> dict[tuple, set[str]]:
    """The pools of a server's backups, joined where they are backups of one instance (a
    daily and a weekly config of the same server) or of an instance restored from another
    pool's backup: each group of pools, with its instances. EC2's own records decide
    (SourceInstanceId; a new instance's backups name, as SourceImageId, the backup it was
    restored from); a copy, which has no SourceInstanceId, by its recorded instance."""

    def instance_of(image: dict) -> str:
        return str(image.get("SourceInstanceId") or read_recorded(image).instance_id or "")

    by_id = {i["ImageId"]: i for i in images}
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for image in found:
        pool = f"pool:{image_tag(image, TAG_POOL) or '-'}"
        parent[root(pool)] = root(f"instance:{instance_of(image)}")
        origin = by_id.get(str(image.get("SourceImageId") or ""))
        if origin is not None:  # this instance was restored from that backup
            parent[root(f"instance:{instance_of(origin)}")] = root(f"instance:{instance_of(image)}")
    groups: dict[str, tuple[set[str], set[str]]] = {}
    for node in list(parent):
        kind, _, name = node.partition(":")
        pools, instances = groups.setdefault(root(node), (set(), set()))
        (pools if kind == "pool" else instances).add(name)
    return {tuple(sorted(p)): i for p, i in groups.values() if p}


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
        time.sleep(polling.POLL_FIRST_SECONDS)
    image = found[0]
    snapshot_ids = [
        m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if "Ebs" in m
    ]
    present: set[str] = set()
    if snapshot_ids:
        for snapshot in ec2.describe_snapshots(
            Filters=[{"Name": "snapshot-id", "Values": snapshot_ids}]
        ).get("Snapshots", []):
            present.add(snapshot["SnapshotId"])
    missing = [s for s in snapshot_ids if s not in present]
    in_bin: set[str] = set()
    if missing:  # one call for all of them
        listed = ec2.list_snapshots_in_recycle_bin(SnapshotIds=missing).get("Snapshots", [])
        in_bin = {s["SnapshotId"] for s in listed}
    for snapshot_id in missing:
        if snapshot_id not in in_bin:
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


def no_backup_message(ec2: Any, config: RestoreConfig, what: str) -> str:
    """Say which backup is missing, and which servers do have backups."""
    servers = sorted(
        {read_recorded(i).server or "?" for i in managed_images(ec2, None, config.schedule)}
    )
    known = ", ".join(servers) if servers else "none"
    return f"no available backup of {what}{backup_scope(config)}. Servers with backups: {known}"


def backup_scope(config: RestoreConfig) -> str:
    """SCHEDULE and BACKUP_BEFORE in words, for a message."""
    scope = f" of schedule {config.schedule}" if config.schedule else ""
    if config.backup_before:
        scope += f" at or before {config.backup_before:%Y-%m-%dT%H:%M:%SZ}"
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


def paginate_bin(ec2: Any, **kwargs: Any) -> Iterator[dict]:
    """ListImagesInRecycleBin, page by page."""
    for page in ec2.get_paginator("list_images_in_recycle_bin").paginate(**kwargs):
        yield from page.get("Images", [])


def bin_time(value: Any) -> str:
    """A Recycle Bin time, to the minute."""
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else str(value or "-")


def restored_earlier(ec2: Any, restores: list[Restore]) -> dict[str, list[dict]]:
    """The live instances an earlier restore (not a drill) launched for each server, in its
    pool: two DescribeInstances for them all (FILTER_VALUES_MAX servers a call), one by the
    server tag a restore sets at launch, one by the image, for an instance an older
    version restored without it."""
    images = {r.image["ImageId"]: r for r in restores if r.image}
    servers = {r.server: r for r in restores if r.image}
    live = {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}
    found: dict[str, list[dict]] = {}
    for key, values, of in ((TAG_RESTORED_SERVER, sorted(servers), servers),
                            (TAG_RESTORED_FROM, sorted(images), images)):  # fmt: skip
        for batch in chunked(values):
            filters = [{"Name": f"tag:{key}", "Values": batch}, live]
            for reservation in paginate(ec2, "describe_instances", "Reservations",
                                        Filters=filters):  # fmt: skip
                for instance in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    restore = of.get(tags.get(key, ""))
                    if restore is None or TAG_DRILL in tags or not same_pool(restore, tags):
                        continue
                    listed = found.setdefault(restore.server, [])
                    if instance["InstanceId"] not in {i["InstanceId"] for i in listed}:
                        listed.append(instance)
    return found


def same_pool(restore: Restore, tags: dict[str, str]) -> bool:
    """Whether an instance a restore tagged came from the pool this restore picks from."""
    pool = image_tag(restore.image or {}, TAG_POOL)
    return tags.get(TAG_RESTORED_POOL, pool) == pool
