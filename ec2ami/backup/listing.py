"""The dry run (the plan printed, nothing changed) and --list: the backups there are."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ec2ami import clock
from ec2ami.aws import paginate
from ec2ami.backup.config import CONSISTENCY_WORDS
from ec2ami.backup.dr import destination_regions, marked_copies
from ec2ami.backup.images import protection_hold
from ec2ami.backup.look import discover, managed_images
from ec2ami.backup.ownership import find_holdings, is_copy, owners_of
from ec2ami.backup.sweep import Evidence, find_orphans, region_of, sweep_places
from ec2ami.backup.tags import stamp
from ec2ami.contract import TAG_VERIFIED
from ec2ami.errors import EXIT_OK
from ec2ami.output import print_json, print_table, verified_summary

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.dr import Region
    from ec2ami.backup.look import Server
    from ec2ami.backup.ownership import Holdings
    from ec2ami.backup.plan import BackupPlan, Image

log = logging.getLogger(__name__)


def print_plan(plan: BackupPlan, regions: list[Region]) -> None:
    """Print the plan, as --dry-run: what the run would create, tag, copy, share and remove.

    -v adds each new image's tags (tag values are the instance's and the config's,
    never user data)."""
    for server in plan.servers:
        spec = server.spec
        mode = CONSISTENCY_WORDS[spec.consistency]
        print(f"Would create image {server.name} of {spec.instance_id} ({spec.name}, {mode})")
        log.debug("  with tags %s", ", ".join(f"{t['Key']}={t['Value']}" for t in server.tags))
        if server.dropped_tags:
            print(f"  without instance tags {', '.join(server.dropped_tags)}: 50-tag limit")
        if server.deprecate_at:
            print(f"  deprecated, with its copies, at {stamp(server.deprecate_at)}")
        for planned in server.prunes:
            print_prune(planned.image, planned.reason, spec.name, "", plan.protect)
        for where, image, why in server.held:
            print(f"Would keep {image.image_id} ({image.name}) of {spec.name} in {where}, due "
                  f"for pruning: still used by {why}")  # fmt: skip
        for region in regions:
            key = f", encrypted with {region.kms_key_id}" if region.kms_key_id else ""
            print(f"Would copy {server.name} ({spec.name}) to {region.name}{key}")
            for planned in server.copy_prunes[region.name]:
                print_prune(
                    planned.image, planned.reason, spec.name, f" in {region.name}", plan.protect
                )
    for out in plan.failures:
        print(f"Would fail {out.name} ({out.instance_id}): {out.error}")
    if plan.share_with:
        accounts = ", ".join(sorted(plan.share_with))
        print(f"Would share each new image and copy with {accounts}")
    if plan.protect:
        print("Would protect each new image and copy from deregistration (without cooldown)")


def print_prune(image: Image, reason: str, server: str, where: str, protect: bool) -> None:
    """One planned deregistration, as prune() will carry it out."""
    what = f"{image.image_id} ({image.name}) of {server}{where}: {reason}"
    held = protection_hold(image, protect)
    if held:
        print(f"Would keep {what}, since it {held}")
    elif image.protected:
        print(f"Would deregister {what}, lifting its deregistration protection")
    else:
        print(f"Would deregister {what}")


def print_sweep_plan(
    clients: Clients,
    regions: list[Region],
    config: BackupConfig,
    held: Holdings,
    servers: list[Server],
    now: datetime,
) -> None:
    """Print the orphaned snapshots the sweep would delete (and keep), in each region."""
    for ec2, source_region, where in sweep_places(clients, regions):
        evidence = Evidence.of(config, held, servers, source_region, region_of(ec2))
        orphans, untied = find_orphans(ec2, config, evidence, now)
        for snapshot_id in orphans:
            print(f"Would delete orphaned snapshot {snapshot_id}{where}")
        for snapshot_id in untied:
            print(f"Would keep snapshot {snapshot_id}{where}: it claims this pool, but no "
                  "fact ties it to it")  # fmt: skip


def list_backups(
    clients: Clients,
    config: BackupConfig,
    only: list[str],
    recycle_bin: bool = False,
    as_json: bool = False,
) -> int:
    """Print a table of managed backups per server and region, newest first; with
    recycle_bin also the images each region's Recycle Bin holds."""
    ec2, home = clients.ec2, clients.region
    regions = destination_regions(clients, config)
    every = managed_images(ec2, None)
    servers, failures = discover(ec2, config, only, clock.utc_now())
    owners = owners_of(config, servers, every, {o.name: o.instance_id for o in failures})
    ours = [i for i in every if i.schedule == config.schedule]
    held = find_holdings(ec2, config.schedule, home, owners, ours, regions)
    apart = {image.image_id for _, image, _ in held.impostors}
    found = [(home, i) for i in every if not is_copy(i, home)]
    for region in regions:
        found += [(region.name, i) for i in marked_copies(region, home)]
    found = [(r, i) for r, i in found if (not only or i.server in only) and i.image_id not in apart]
    found.sort(
        key=lambda ri: (ri[1].server, ri[0] != clients.region, ri[0], -ri[1].created.timestamp())
    )
    rows = [
        {"server": i.server, "region": where, "pool": i.pool or "-", "image_id": i.image_id,
         "name": i.name, "created": stamp(i.created), "state": i.state, "schedule": i.schedule,
         "verified": verified_summary(i.tags.get(TAG_VERIFIED))}
        for where, i in found
    ]  # fmt: skip
    binned = (
        recycle_bins([(home, ec2)] + [(r.name, r.ec2) for r in regions]) if recycle_bin else None
    )
    if as_json:
        impostors = [{"region": r, "image_id": i.image_id, "name": i.name, "claims": i.server,
                      "why": why} for r, i, why in held.impostors]  # fmt: skip
        print_json({"backups": rows, "impostors": impostors, "recycle_bin": binned})
        return EXIT_OK
    columns = ["server", "region", "pool", "image_id", "name", "created", "state", "schedule",
               "verified"]  # fmt: skip
    table = [{**r, "created": r["created"].replace("T", " ").rstrip("Z")} for r in rows]
    print_table([{c: c.upper().replace("_ID", "") for c in columns}, *table], columns)
    if not rows:
        print("(no managed backups)")
    print_impostors(held.impostors)
    if binned is not None:
        print_recycle_bins(binned)
    return EXIT_OK


def print_impostors(impostors: list[tuple[str, Image, str]]) -> None:
    """The images that claim to be this pool's backups and are not: kept, never counted."""
    if not impostors:
        return
    print()
    print("Not this pool's backups, though their tags say so (kept, never counted or pruned):")
    rows = [("REGION", "IMAGE", "NAME", "CLAIMS", "WHY")]
    rows += [(r, i.image_id, i.name, i.server, why) for r, i, why in impostors]
    print_table(rows)


def recycle_bins(regions: list[tuple[str, Any]]) -> list[dict]:
    """The images in each region's Recycle Bin (deregistered, kept by a retention rule).
    EC2 lists them without tags, so all are shown, by name; ami_to_ec2.py --ami restores
    one."""
    found = []
    for name, ec2 in regions:
        for image in paginate(ec2, "list_images_in_recycle_bin", "Images"):
            entered, leaves = image.get("RecycleBinEnterTime"), image.get("RecycleBinExitTime")
            found.append({"region": name, "image_id": image["ImageId"],
                          "name": image.get("Name", ""),
                          "deleted": stamp(entered) if entered else None,
                          "leaves_bin": stamp(leaves) if leaves else None})  # fmt: skip
    return found


def print_recycle_bins(found: list[dict]) -> None:
    """The Recycle Bin's images as a table."""
    print()
    if not found:
        print("(no images in the Recycle Bin)")
        return
    print("In the Recycle Bin (ami_to_ec2.py --ami ID restores one):")
    columns = ["region", "image_id", "name", "deleted", "leaves_bin"]
    header = {"region": "REGION", "image_id": "IMAGE", "name": "NAME", "deleted": "DELETED",
              "leaves_bin": "LEAVES THE BIN"}  # fmt: skip
    shown = [{**f, "deleted": short(f["deleted"]), "leaves_bin": short(f["leaves_bin"])}
             for f in found]  # fmt: skip
    print_table([header, *shown], columns)


def short(when: str | None) -> str:
    """A stamp to the minute, for a table."""
    return when.replace("T", " ")[:16] if when else "-"
