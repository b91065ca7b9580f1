"""--cost: what the kept snapshots store, measured with the EBS direct APIs' block lists,
and what that costs a month, per server, schedule and region.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.aws import chunked, error_text, paginate
from ec2ami.backup.dr import destination_regions, marked_copies
from ec2ami.backup.look import managed_images
from ec2ami.backup.ownership import is_copy
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import AVAILABLE, DISABLED
from ec2ami.live import progress
from ec2ami.output import print_json, print_table

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.plan import Image

log = logging.getLogger(__name__)

# EBS snapshots, as --cost measures them with the EBS direct APIs.
BLOCK_BYTES, GIB = 512 * 1024, 1024**3  # the direct APIs' block; sizes are in GiB
DIRECT_RESULTS_MAX = 10000  # MaxResults of ListSnapshotBlocks and ListChangedBlocks
ARCHIVE_TIER = "archive"  # DescribeSnapshots' StorageTier of an archived snapshot
COSTED_STATES = (AVAILABLE, DISABLED)  # images whose snapshots are whole and billed
ERR_DIRECT_VALIDATION = "ValidationException"  # e.g. two snapshots of different volumes
DIRECT_ACCESS_DENIED = {"AccessDeniedException", "AccessDenied"}
# A parent snapshot the direct APIs cannot compare with: another account's (a public or
# shared image's), deleted, or archived.
PARENT_UNREADABLE = {ERR_DIRECT_VALIDATION, "ResourceNotFoundException", *DIRECT_ACCESS_DENIED}
COPIED_VOLUME = "vol-ffffffff"  # the VolumeId EC2 gives a copied snapshot
DIRECT_ACTIONS = ["ebs:ListSnapshotBlocks", "ebs:ListChangedBlocks"]  # --cost's only lists
COST_THREADS = 8  # lineages measured at once: enough for the pace below at 200 ms a call


# EBS bills the unique blocks that a volume's snapshots hold together. The EBS direct APIs
# count them in 512 KiB blocks: ListSnapshotBlocks gives the blocks of the oldest kept
# snapshot, and ListChangedBlocks what each later one wrote; their sum is what the kept
# snapshots hold. Snapshots in the archive tier are full copies, priced apart.
@dataclass(frozen=True)
class Kept:
    """One snapshot of a kept backup, in its volume's lineage."""

    snapshot_id: str
    row: tuple[str, str, str]  # (server, pool, schedule): the row it counts in
    archived_bytes: int | None  # None: in the standard tier
    kms_key_id: str | None = None  # encrypted with this key


@dataclass(frozen=True)
class SnapshotFact:
    """What DescribeSnapshots says of a kept snapshot."""

    size_gib: int
    archived_bytes: int | None  # None: in the standard tier
    volume_id: str
    kms_key_id: str | None


@dataclass
class Measured:
    """What one lineage's kept standard-tier snapshots add, oldest first; why the count
    stopped, if it did; and how the oldest was counted, if that needs saying."""

    added: list[int]
    error: str | None = None
    note: str | None = None


@dataclass
class CostRow:
    """What one server's backups of one pool and schedule hold in one region, and cost a
    month: two configs' web01 are two rows."""

    server: str
    schedule: str
    region: str
    pool: str = ""
    backups: int = 0
    volumes: int = 0
    size_gib: int = 0  # the newest backup's volumes, in full
    stored_blocks: int = 0  # standard tier: unique blocks this schedule's snapshots add
    archived_bytes: int = 0
    binned: int = 0  # snapshots of this server's instances in the Recycle Bin
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def monthly(self, config: BackupConfig) -> float:
        """The estimated cost a month, at the configured prices."""
        stored = self.stored_blocks * BLOCK_BYTES / GIB
        archived = self.archived_bytes / GIB
        prices = config.snapshot_price_gb_month, config.archive_price_gb_month
        return stored * prices[0] + archived * prices[1]


COST_NOTE = """
Stored: the unique 512 KiB blocks the kept snapshots hold together, counted with the EBS
direct APIs; each schedule's row has the blocks its own snapshots add to the ones before
them, and a volume made from a snapshot (a restored server's, one launched from a golden
image) adds only what differs from it, as EBS stores it. An estimate: blocks that other
snapshots of the same volumes (another tool's) also hold are counted here, though EBS bills
them once; an archived snapshot is billed in full (FullSnapshotSizeInBytes), for at least
90 days. IN BIN: snapshots of these servers in the Recycle Bin, billed at the standard rate
while there, which the direct APIs cannot read: counted, not in USD/MONTH. Prices: USD {0}
(standard) and {1} (archive) per GiB-month, from SNAPSHOT_PRICE_GB_MONTH and
ARCHIVE_PRICE_GB_MONTH.
"""


def cost_report(clients: Clients, config: BackupConfig, only: list[str], as_json: bool) -> int:
    """Print what each server's kept backups store and cost a month, per schedule and region;
    exit 1 if any volume could not be measured."""
    rows: list[CostRow] = []
    places = [(clients.region, clients.ec2, managed_images(clients.ec2, None))]
    places += [(r.name, r.ec2, marked_copies(r, clients.region))
               for r in destination_regions(clients, config)]  # fmt: skip
    for region, ec2, images in places:
        kept = [i for i in images if i.state in COSTED_STATES and (not only or i.server in only)]
        if region == clients.region:
            kept = [i for i in kept if not is_copy(i, region)]
        rows += region_costs(clients.client("ebs", region), ec2, region, kept)
    named = {s.name for s in config.servers if not only or s.name in only}
    rows += [CostRow(name, config.schedule, clients.region, config.pool) for name in
             sorted(named - {r.server for r in rows if r.region == clients.region})]  # fmt: skip
    rows.sort(key=lambda r: (r.server, r.region != clients.region, r.region, r.schedule))
    (print_cost_json if as_json else print_cost)(rows, config)
    return EXIT_FAILED if any(r.errors for r in rows) else EXIT_OK


def region_costs(ebs: Any, ec2: Any, region: str, images: list[Image]) -> list[CostRow]:
    """The cost rows of one region's kept backups: each volume's lineage measured once."""
    facts = snapshot_facts(ec2, [s for i in images for s in i.devices.values()])
    rows: dict[tuple[str, str, str], CostRow] = {}
    lineages: dict[tuple[str, str, str], list[Kept]] = {}
    for image in sorted(images, key=lambda i: i.created):
        key = (image.server, image.pool, image.schedule)
        row = rows.setdefault(key, CostRow(image.server, image.schedule, region, image.pool))
        row.backups += 1
        row.volumes = max(row.volumes, len(image.devices))
        row.size_gib = 0  # the newest backup's, as images come oldest first
        for device, snapshot_id in image.devices.items():
            fact = facts.get(snapshot_id, SnapshotFact(0, None, "", None))
            row.size_gib += fact.size_gib
            kept = Kept(snapshot_id, key, fact.archived_bytes, fact.kms_key_id)
            lineages.setdefault((image.server, image.instance_id, device), []).append(kept)
    standard = {key: [k for k in chain if k.archived_bytes is None]
                for key, chain in lineages.items()}  # fmt: skip
    firsts = {key: facts[chain[0].snapshot_id].volume_id for key, chain in standard.items()
              if chain and chain[0].snapshot_id in facts}  # fmt: skip
    parents = parents_of(ec2, [v for v in firsts.values() if v != COPIED_VOLUME])
    done: list[tuple] = []  # one entry per lineage measured (list.append is atomic)

    def measure_one(key: tuple[str, str, str]) -> Measured:
        try:
            return measure(ebs, standard[key], firsts.get(key), parents)
        finally:
            done.append(key)

    def lines() -> list[tuple[str, bool]]:  # for a long run: how far it got
        return [(f"{region}: {len(done)} of {len(standard)} volumes' backups measured",
                 len(done) == len(standard))]  # fmt: skip

    with progress("--cost", lines, quiet=False), ThreadPoolExecutor(COST_THREADS) as pool:
        measured = dict(zip(standard, pool.map(measure_one, standard), strict=True))
    for key, chain in lineages.items():
        (server, _, device), found = key, measured[key]
        for kept, blocks in zip(standard[key], found.added, strict=False):
            rows[kept.row].stored_blocks += blocks
        for kept in chain:
            rows[kept.row].archived_bytes += kept.archived_bytes or 0
        if found.note and standard[key]:
            rows[standard[key][0].row].notes.append(f"{device}: {found.note}")
        if found.error:
            log.error("%s in %s: %s: %s", server, region, device, found.error)
            for counted in {k.row for k in chain}:
                rows[counted].errors.append(f"{device}: {found.error}")
    count_binned(ec2, images, rows)
    return list(rows.values())


def parents_of(ec2: Any, volume_ids: list[str]) -> dict[str, str]:
    """The snapshot each volume that still exists was made from ("": made empty), by
    DescribeVolumes with a filter, a batch at a time (a gone volume is simply absent)."""
    found: dict[str, str] = {}
    for chunk in chunked(sorted(set(volume_ids))):
        filters = [{"Name": "volume-id", "Values": chunk}]
        for volume in paginate(ec2, "describe_volumes", "Volumes", Filters=filters):
            found[volume["VolumeId"]] = volume.get("SnapshotId") or ""
    return found


def count_binned(ec2: Any, images: list[Image], rows: dict[tuple[str, str, str], CostRow]) -> None:
    """The Recycle Bin's snapshots that CreateImage made of these servers' instances: EBS
    bills them at the standard rate while they wait there, but the direct APIs cannot read
    them, so they are counted, not measured (ListSnapshotsInRecycleBin lists no tags: the
    instance comes from EC2's own description, "Created by CreateImage(i-...) for ami-...")."""
    servers = {i.instance_id: (i.server, i.pool, i.schedule) for i in images}
    for snapshot in paginate(ec2, "list_snapshots_in_recycle_bin", "Snapshots"):
        made_by = BIN_DESCRIPTION.match(snapshot.get("Description") or "")
        key = servers.get(made_by.group(1)) if made_by else None
        if key in rows:
            rows[key].binned += 1


BIN_DESCRIPTION = re.compile(r"Created by CreateImage\((i-[0-9a-f]+)\) for ami-[0-9a-f]+")


def snapshot_facts(ec2: Any, snapshot_ids: list[str]) -> dict[str, SnapshotFact]:
    """Each snapshot's volume size (GiB), full size in bytes if archived, volume and KMS key."""
    facts: dict[str, SnapshotFact] = {}
    for chunk in chunked(sorted(set(snapshot_ids))):
        filters = [{"Name": "snapshot-id", "Values": chunk}]
        for snap in paginate(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"],
                             Filters=filters):  # fmt: skip
            archived = snap.get("StorageTier") == ARCHIVE_TIER
            full = snap.get("FullSnapshotSizeInBytes") or snap["VolumeSize"] * GIB  # at most
            key = snap.get("KmsKeyId") if snap.get("Encrypted") else None
            facts[snap["SnapshotId"]] = SnapshotFact(
                snap["VolumeSize"], full if archived else None, snap.get("VolumeId", ""), key
            )
    return facts


def measure(
    ebs: Any, standard: list[Kept], volume_id: str | None, parents: dict[str, str]
) -> Measured:
    """The blocks each standard-tier snapshot of a lineage adds to the ones before it,
    oldest first. The oldest adds what it holds beyond the snapshot its volume was made
    from (a restored backup's, a golden image's: EBS stores a snapshot of such a volume
    incrementally to it), or all of its blocks where there is none to compare with."""
    found = Measured([])
    for before, kept in zip([None, *standard], standard, strict=False):
        try:
            if before is None:
                blocks, found.note = first_blocks(ebs, kept, volume_id, parents)
            else:
                blocks = added_blocks(ebs, before, kept)
            found.added.append(blocks)
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if code in DIRECT_ACCESS_DENIED and kept.kms_key_id:
                found.error = (f"{kept.snapshot_id} is encrypted with KMS key {kept.kms_key_id}, "
                               "and --cost may not decrypt with it (kms:Decrypt through EBS): add "
                               "the key's ARN to BACKUP_KMS_KEYS and attach the policy "
                               "--print-iam-policy prints")  # fmt: skip
                return found
            if code in DIRECT_ACCESS_DENIED:
                raise  # the policy, not this volume: the command says so once
            found.error = f"{error_text(err)} (snapshot {kept.snapshot_id})"
            return found
    return found


def first_blocks(
    ebs: Any, kept: Kept, volume_id: str | None, parents: dict[str, str]
) -> tuple[int, str | None]:
    """The blocks the oldest kept snapshot of a lineage adds, and a note where it is counted
    whole though EBS may store less."""
    parent = parents.get(volume_id or "")
    if parent:
        try:
            pages = direct_pages(ebs, "list_changed_blocks", "ChangedBlocks",
                                 FirstSnapshotId=parent,
                                 SecondSnapshotId=kept.snapshot_id)  # fmt: skip
            return sum(1 for block in pages if "SecondBlockToken" in block), None
        except ClientError as err:
            if err.response["Error"]["Code"] not in PARENT_UNREADABLE:
                raise
            return all_blocks(ebs, kept), (
                f"{kept.snapshot_id} counted whole: its volume was made from {parent}, which "
                "the EBS direct APIs cannot compare with (another account's, deleted or "
                "archived): EBS may store less")  # fmt: skip
    if volume_id and volume_id != COPIED_VOLUME and volume_id not in parents:
        return all_blocks(ebs, kept), (
            f"{kept.snapshot_id} counted whole: its volume {volume_id} is gone, so whether "
            "it was made from a snapshot is not known")  # fmt: skip
    return all_blocks(ebs, kept), None


def added_blocks(ebs: Any, before: Kept, kept: Kept) -> int:
    """The blocks a snapshot holds that the one before it does not."""
    try:
        pages = direct_pages(ebs, "list_changed_blocks", "ChangedBlocks",
                             FirstSnapshotId=before.snapshot_id,
                             SecondSnapshotId=kept.snapshot_id)  # fmt: skip
        return sum(1 for block in pages if "SecondBlockToken" in block)
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DIRECT_VALIDATION:
            raise
        log.debug("%s and %s: %s", before.snapshot_id, kept.snapshot_id, error_text(err))
    return all_blocks(ebs, kept)  # a new lineage (the volume was replaced)


def all_blocks(ebs: Any, kept: Kept) -> int:
    """Every block a snapshot holds."""
    return sum(1 for _ in direct_pages(ebs, "list_snapshot_blocks", "Blocks",
                                       SnapshotId=kept.snapshot_id))  # fmt: skip


def direct_pages(ebs: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict]:
    """Every entry of every page of an EBS direct API list (botocore has no paginator)."""
    token = None
    while True:
        more: dict[str, str] = {"NextToken": token} if token else {}
        page = getattr(ebs, operation)(MaxResults=DIRECT_RESULTS_MAX, **kwargs, **more)
        yield from page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return


def print_cost(rows: list[CostRow], config: BackupConfig) -> None:
    """The cost table, a total line, and what the figures are."""
    table = [("SERVER", "SCHEDULE", "REGION", "POOL", "BACKUPS", "VOLUMES", "SIZE GiB",
              "STORED GiB", "ARCHIVED GiB", "IN BIN", "USD/MONTH")]  # fmt: skip
    for row in rows:
        stored = row.stored_blocks * BLOCK_BYTES / GIB
        money = "?" if row.errors else f"{row.monthly(config):.2f}" + ("*" if row.notes else "")
        table.append((row.server, row.schedule, row.region, row.pool or "-", str(row.backups),
                      str(row.volumes), str(row.size_gib), "?" if row.errors else f"{stored:.2f}",
                      f"{row.archived_bytes / GIB:.2f}", str(row.binned), money))  # fmt: skip
    total = cost_total(rows, config)
    table.append(("TOTAL", "", "", "", str(total["backups"]), "", str(total["size_gib"]),
                  f"{total['stored_gib']:.2f}", f"{total['archived_gib']:.2f}",
                  str(total["binned_snapshots"]), f"{total['usd_per_month']:.2f}"))  # fmt: skip
    print_table(table)
    for row in rows:
        for note in row.notes:
            print(f"* {row.server} ({row.schedule}, {row.region}): {note}")
    print(cost_note(config))


def cost_total(rows: list[CostRow], config: BackupConfig) -> dict[str, Any]:
    """The sums over every row (a row that could not be measured counts as measured so far)."""
    return {
        "backups": sum(r.backups for r in rows),
        "size_gib": sum(r.size_gib for r in rows),
        "stored_gib": round(sum(r.stored_blocks for r in rows) * BLOCK_BYTES / GIB, 3),
        "archived_gib": round(sum(r.archived_bytes for r in rows) / GIB, 3),
        "binned_snapshots": sum(r.binned for r in rows),
        "usd_per_month": round(sum(r.monthly(config) for r in rows), 2),
    }


def cost_note(config: BackupConfig) -> str:
    """What the figures are, with the prices used."""
    return COST_NOTE.format(config.snapshot_price_gb_month, config.archive_price_gb_month)


def print_cost_json(rows: list[CostRow], config: BackupConfig) -> None:
    """The cost report as one JSON document."""
    document = {
        "prices_usd_per_gib_month": {
            "standard": config.snapshot_price_gb_month,
            "archive": config.archive_price_gb_month,
        },
        "rows": [
            {
                "server": r.server,
                "schedule": r.schedule,
                "region": r.region,
                "pool": r.pool,
                "backups": r.backups,
                "volumes": r.volumes,
                "size_gib": r.size_gib,
                "stored_blocks": r.stored_blocks,
                "stored_gib": round(r.stored_blocks * BLOCK_BYTES / GIB, 3),
                "archived_gib": round(r.archived_bytes / GIB, 3),
                "binned_snapshots": r.binned,
                "usd_per_month": round(r.monthly(config), 2),
                "errors": r.errors,
                "notes": r.notes,
            }
            for r in rows
        ],
        "total": cost_total(rows, config),
        "note": cost_note(config).strip(),
    }
    print_json(document)
