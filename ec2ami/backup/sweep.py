"""The sweep: this pool's snapshots that no image uses any more, deleted once the run is
done (a crash between deregistering and deleting leaves them).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.aws import chunked, error_text, paginate
from ec2ami.backup.journal import Journal
from ec2ami.backup.look import to_image
from ec2ami.contract import (
    TAG_MANAGED,
    TAG_POOL,
    TAG_SCHEDULE,
    TAG_SERVER,
    TAG_SOURCE_REGION,
    TOOL,
)
from ec2ami.facts import ERR_SNAPSHOT_IN_USE

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.dr import Region
    from ec2ami.backup.look import Server
    from ec2ami.backup.ownership import Holdings, Owners

log = logging.getLogger(__name__)

SNAPSHOT_PENDING = "pending"
COPIED_VOLUME = "vol-ffffffff"  # the VolumeId EC2 reports for a snapshot made by a copy
# EC2's description of the snapshots it makes for an image: "Created by CreateImage(i-...)
# for ami-..." and "Copied for DestinationAmi ami-... from SourceAmi ...".
IMAGE_OF_SNAPSHOT = re.compile(r"(?:for|DestinationAmi) (ami-[0-9a-f]+)")


@dataclass(frozen=True)
class Evidence:
    """What ties a marked snapshot to this pool, beyond its tags: the volume it was taken
    from (an instance of a server, or a volume the pool's own images were taken from),
    or this config's journal of what its deregistrations left."""

    owners: Owners
    source_region: str | None  # None in the region backed up; else the copies' source
    volumes: frozenset[str]  # the servers' instances' volumes (in the region backed up)
    native_snapshots: frozenset[str]  # snapshots of the pool's own images there
    journaled: frozenset[str]

    @classmethod
    def of(
        cls, config: BackupConfig, held: Holdings, servers: list[Server],
        source_region: str | None, region: str,
    ) -> Evidence:  # fmt: skip
        """The evidence in one region: REGION (source_region None) or a DR region."""
        journal = Journal.beside(config.state_file).held(region)
        if source_region is not None:
            return cls(held.owners, source_region, frozenset(), frozenset(), frozenset(journal))
        volumes = {
            m["Ebs"]["VolumeId"]
            for s in servers
            for m in s.instance.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("VolumeId")
        }
        natives = {snapshot for image in held.natives for snapshot in image.snapshot_ids}
        return cls(held.owners, None, frozenset(volumes), frozenset(natives), frozenset(journal))

    def claims(self, snapshot: dict) -> bool:
        """Whether the snapshot's tags say it is this pool's (here, or a copy's)."""
        tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
        server, pool = tags.get(TAG_SERVER, ""), tags.get(TAG_POOL, "")
        return (
            tags.get(TAG_SOURCE_REGION) == self.source_region
            and server in self.owners.lineage
            and pool in (self.owners.pool, "")
        )

    def ties(self, snapshot: dict, pool_volumes: set[str]) -> bool:
        """Whether facts tie the snapshot to this pool: its volume, or the journal."""
        volume = snapshot.get("VolumeId")
        return snapshot["SnapshotId"] in self.journaled or (
            volume != COPIED_VOLUME and volume in pool_volumes
        )


def sweep_snapshots(
    ec2: Any, config: BackupConfig, evidence: Evidence, started: datetime, where: str = ""
) -> None:
    """Delete this pool's snapshots that no image uses any more, and say so in one line.

    One paginated DescribeSnapshots on the marker and schedule finds the candidates;
    snapshots of this run, pending ones, those an image still names (or an image in the
    Recycle Bin), and those no fact ties to this pool stay. A snapshot some image still
    uses is refused by EC2 (in use) and left alone.
    """
    swept, kept = [], []
    orphans, untied = find_orphans(ec2, config, evidence, started)
    for snapshot_id in orphans:
        try:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
            swept.append(snapshot_id)
        except ClientError as err:
            if err.response["Error"]["Code"] == ERR_SNAPSHOT_IN_USE:
                continue
            kept.append(f"{snapshot_id} ({error_text(err)})")
    Journal.beside(config.state_file).strike(region_of(ec2), swept)
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
    if untied:
        log.warning(
            "sweep%s: snapshot(s) %s carry this pool's tags, but no fact ties them to it (not "
            "taken from its servers' volumes, not left by its own deregistrations): kept",
            where,
            ", ".join(untied),
        )


def find_orphans(
    ec2: Any, config: BackupConfig, evidence: Evidence, started: datetime
) -> tuple[list[str], list[str]]:
    """This pool's snapshots, made before this run, that no image of the account uses (nor
    one in the Recycle Bin); and the orphans that claim the pool but no fact ties to it."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]},
        {"Name": f"tag:{TAG_SCHEDULE}", "Values": [config.schedule]},
    ]
    described = list(
        paginate(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=filters)
    )
    volumes = set(evidence.volumes) | {
        s.get("VolumeId", "") for s in described if s["SnapshotId"] in evidence.native_snapshots
    }
    claimed = [
        s
        for s in described
        if s.get("State") != SNAPSHOT_PENDING and s["StartTime"] < started and evidence.claims(s)
    ]
    used = snapshots_in_use(ec2, [s["SnapshotId"] for s in claimed])
    orphans = [s for s in claimed if s["SnapshotId"] not in used]
    binned = binned_in_use(ec2, orphans)
    orphans = [s for s in orphans if s["SnapshotId"] not in binned]
    tied = sorted(s["SnapshotId"] for s in orphans if evidence.ties(s, volumes))
    untied = sorted(s["SnapshotId"] for s in orphans if not evidence.ties(s, volumes))
    return tied, untied


def binned_in_use(ec2: Any, snapshots: list[dict]) -> set[str]:
    """The snapshots whose image is in the Recycle Bin: it can be restored from there, and
    needs them. EC2's own description of a snapshot names its image."""
    images: dict[str, list[str]] = {}
    for snapshot in snapshots:
        found = IMAGE_OF_SNAPSHOT.search(snapshot.get("Description", ""))
        if found:
            images.setdefault(found.group(1), []).append(snapshot["SnapshotId"])
    if not images:
        return set()
    binned = {i["ImageId"] for i in paginate(ec2, "list_images_in_recycle_bin", "Images")}
    return {s for image, ids in images.items() if image in binned for s in ids}


def region_of(ec2: Any) -> str:
    """The region a client calls."""
    return str(ec2.meta.region_name)


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


def sweep_places(clients: Clients, regions: list[Region]) -> list[tuple[Any, str | None, str]]:
    """Where a run sweeps: (client, source region of the copies there, " in region")."""
    return [(clients.ec2, None, "")] + [(r.ec2, clients.region, f" in {r.name}") for r in regions]
