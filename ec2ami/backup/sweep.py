"""The sweep: this pool's snapshots that no image uses any more, deleted once the run is
done (a crash between deregistering and deleting leaves them).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.aws import chunked, error_text, paginate
from ec2ami.backup.look import to_image
from ec2ami.backup.plan import Image
from ec2ami.backup.pools import in_pool
from ec2ami.contract import (
    TAG_INSTANCE_ID,
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

log = logging.getLogger(__name__)

SNAPSHOT_PENDING = "pending"


def sweep_snapshots(
    ec2: Any,
    config: BackupConfig,
    instance_of: dict[str, str],
    started: datetime,
    source_region: str | None = None,
    where: str = "",
) -> None:
    """Delete this pool's snapshots that no image uses any more, and say so in one line.

    One paginated DescribeSnapshots on the marker and schedule finds the candidates;
    snapshots of this run, pending ones and those an image still names stay. A
    snapshot some image still uses is refused by EC2 (in use) and left alone.
    """
    swept, kept = [], []
    for snapshot_id in find_orphans(ec2, config, instance_of, started, source_region):
        try:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
            swept.append(snapshot_id)
        except ClientError as err:
            if err.response["Error"]["Code"] == ERR_SNAPSHOT_IN_USE:
                continue
            kept.append(f"{snapshot_id} ({error_text(err)})")
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


def find_orphans(
    ec2: Any,
    config: BackupConfig,
    instance_of: dict[str, str],
    started: datetime,
    source_region: str | None,
) -> list[str]:
    """This pool's snapshots, made before this run, that no image of the account uses."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]},
        {"Name": f"tag:{TAG_SCHEDULE}", "Values": [config.schedule]},
    ]
    candidates = [
        s["SnapshotId"]
        for s in paginate(
            ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=filters
        )
        if s.get("State") != SNAPSHOT_PENDING
        and s["StartTime"] < started
        and snapshot_in_pool(s, config.pool, instance_of, source_region)
    ]
    return sorted(set(candidates) - snapshots_in_use(ec2, candidates))


def snapshot_in_pool(
    snapshot: dict, pool: str, instance_of: dict[str, str], source_region: str | None
) -> bool:
    """Whether a managed snapshot belongs to this pool (and, in a DR region, to our copies)."""
    tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
    if tags.get(TAG_SOURCE_REGION) != source_region:
        return False
    as_image = Image(
        "",
        "",
        "",
        datetime.min,
        tags.get(TAG_SERVER, ""),
        "",
        instance_id=tags.get(TAG_INSTANCE_ID, ""),
        pool=tags.get(TAG_POOL, ""),
    )
    return in_pool(as_image, pool, instance_of)


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
