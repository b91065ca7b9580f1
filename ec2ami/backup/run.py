"""The story of one backup run: look, plan, then create, follow, copy and prune, and report."""

from __future__ import annotations

import argparse
import logging
import queue
import threading
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from ec2ami import clock
from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.backup.config import SSM_MODES
from ec2ami.backup.consistency import back_up, check_post_scripts, ssm_offline
from ec2ami.backup.copies import Finisher, Replication
from ec2ami.backup.dr import destination_regions
from ec2ami.backup.housekeeping import Housekeeping, HousekeepingThread, guarded
from ec2ami.backup.images import ALL_CREATED, follow_up
from ec2ami.backup.journal import Journal
from ec2ami.backup.listing import print_plan, print_sweep_plan
from ec2ami.backup.look import (
    LaunchContext,
    Outcome,
    Server,
    check_requested,
    discover,
    image_references,
    managed_images,
)
from ec2ami.backup.ownership import Holdings, find_holdings, owners_of, split_keep_conflicts
from ec2ami.backup.plan import keep_referenced, plan_backup, planned_tags
from ec2ami.backup.ssm_document import document_mismatch
from ec2ami.backup.state import record_run
from ec2ami.backup.sweep import Evidence, region_of, sweep_places, sweep_snapshots
from ec2ami.contract import TAG_IN_PLACE
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import AVAILABLE, PENDING
from ec2ami.live import progress
from ec2ami.output import RUN_ERRORS, capture_if, print_json

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.dr import Region
    from ec2ami.backup.plan import BackupPlan

log = logging.getLogger(__name__)


def run_backup(
    clients: Clients, config: BackupConfig, args: argparse.Namespace, started: datetime
) -> int:
    """Image every server; prune each as soon as its new image is verified; copy; sweep;
    report, and record the run (STATE_FILE, metrics)."""
    ec2, now = clients.ec2, started.replace(microsecond=0)
    servers, failures = discover(ec2, config, args.server, now)
    check_requested(args.server, servers, failures)
    launches = LaunchContext.read(clients, config, servers)
    if args.dry_run:  # a run reads each server's just ahead of its CreateImage (create_all)
        launches.record_all(ec2, servers)
    listed = managed_images(ec2, config.schedule)
    regions = destination_regions(clients, config)
    owners = owners_of(config, servers, listed)
    held = find_holdings(ec2, config.schedule, clients.region, owners, listed, regions)
    held.warn()
    servers = split_keep_conflicts(config, servers, held.natives, failures)
    natives, copies = held.natives, held.copies
    run_id, prune = clock.new_run_id(), not args.no_prune
    plan = plan_backup(config, servers, failures, natives, regions, copies, now, prune, run_id)
    if config.check_image_references:
        plan = keep_referenced(plan, clients.region, references(clients, regions, plan))
    if args.dry_run:
        with capture_if(args.json) as lines:
            print_plan(plan, regions)
            if plan.prune:
                print_sweep_plan(clients, regions, config, held, servers, started)
        if not plan.servers and not failures:
            log.error("%s", NOTHING_SELECTED)
        code = EXIT_FAILED if failures or not plan.servers else EXIT_OK
        if args.json:
            print_json({"dry_run": True, "exit_code": code, "actions": lines})
        return code
    outcomes = outcomes_of(plan)
    created: queue.Queue[Outcome] = queue.Queue()
    creator_args = (clients, plan, outcomes, config, now, created, launches)
    threading.Thread(target=create_all, args=creator_args, daemon=True).start()
    planned = {p.spec.name: p.prunes for p in plan.servers}
    finisher = Finisher(clients, None, plan)
    journal = Journal.beside(config.state_file)
    source = HousekeepingThread(Housekeeping(ec2, finisher, natives, planned, plan.prune, journal))
    replication = Replication(clients, regions, config, copies, plan, journal)

    def settled(out: Outcome) -> None:
        replication.submit(out)  # first: it reads the outcome before housekeeping adds to it
        source.submit(out)

    with progress("backup", partial(progress_rows, outcomes), args.quiet):
        follow_up(ec2, created, config, settled)
        source.finish()
        copied = replication.finish()
    if plan.prune:
        sweep_all(clients, regions, config, held, servers, started)
    code = report(outcomes + failures, copied, replication.errors)
    record_run(clients, config, started, code, outcomes + failures, copied, natives)
    if args.json:
        print_json(run_document(outcomes + failures, copied, code))
    return code


def progress_rows(outcomes: list[Outcome]) -> list[tuple[str, bool]]:
    """Each server's line for live.progress: its new image and how far it got (read from
    the live thread: it only reads)."""
    rows = []
    for out in list(outcomes):
        image = out.image
        if out.error:
            text, done = f"FAILED: {out.error}", True
        elif not out.image_id:
            text, done = "waits its turn at CreateImage's pace", False
        elif image is None or image.state != AVAILABLE:
            text, done = f"{out.image_id} {image.state if image else 'requested'}", False
        else:
            pruned = f", {len(out.pruned)} pruned" if out.pruned else ""
            text, done = f"{out.image_id} available{pruned}", True
        rows.append((f"{out.name} ({out.instance_id}): {text}", done))
    return rows


def outcomes_of(plan: BackupPlan) -> list[Outcome]:
    """One outcome per planned server, already warning of the images the plan holds back."""
    outcomes = []
    for planned in plan.servers:
        out = Outcome(planned.spec.name, planned.spec.instance_id, run_id=plan.run_id)
        for region, image, why in planned.held:
            out.warn(f"{image.image_id} in {region} is due for pruning but kept: still used by "
                     f"{why}")  # fmt: skip
        outcomes.append(out)
    return outcomes


def references(clients: Clients, regions: list[Region], plan: BackupPlan) -> dict:
    """What still uses each image the plan would prune, per region: the ones in use stay."""
    doomed = {clients.region: [p.image.image_id for s in plan.servers for p in s.prunes]}
    for region in regions:
        doomed[region.name] = [
            p.image.image_id for s in plan.servers for p in s.copy_prunes[region.name]
        ]
    ec2 = {clients.region: clients.ec2, **{r.name: r.ec2 for r in regions}}
    return {where: image_references(ec2[where], ids) for where, ids in doomed.items() if ids}


def sweep_all(
    clients: Clients,
    regions: list[Region],
    config: BackupConfig,
    held: Holdings,
    servers: list[Server],
    started: datetime,
) -> None:
    """Sweep orphaned snapshots of this pool in REGION and in each COPY_TO_REGIONS region."""
    for ec2, source_region, where in sweep_places(clients, regions):
        try:
            evidence = Evidence.of(config, held, servers, source_region, region_of(ec2))
            sweep_snapshots(ec2, config, evidence, started, where)
        except AWS_ERRORS as err:
            log.warning("sweep%s: could not look for orphans: %s", where, error_text(err))


def create_all(
    clients: Clients, plan: BackupPlan, outcomes: list[Outcome], config: BackupConfig,
    now: datetime, created: queue.Queue, launches: LaunchContext,
) -> None:  # fmt: skip
    """Start every server's planned image in turn (the client paces CreateImage), each just
    after reading its launch record for the image's tags; queue each outcome.

    Servers backed up through SSM come last, after one check that they are online,
    so their scripts never hold up the plain ones.
    """
    pairs = sorted(
        zip(plan.servers, outcomes, strict=True), key=lambda p: p[0].spec.consistency in SSM_MODES
    )
    try:
        through_ssm = [p.server for p, _ in pairs if p.spec.consistency in SSM_MODES]
        offline = ssm_offline(clients.ssm, through_ssm) if through_ssm else {}
        scripted = [s for s in through_ssm if s.spec.consistency == "scripts"]
        if scripted and config.ssm_document:  # one DescribeDocument for the run
            problem = document_mismatch(clients.ssm, config)
            offline = {**({s.spec.instance_id: problem for s in scripted} if problem else {}),
                       **offline}  # fmt: skip
        for planned, out in pairs:
            try:
                reason = offline.get(planned.spec.instance_id) or in_place_hold(planned.server)
                if not reason:
                    launches.record(clients.ec2, planned.server)
                    planned.tags, planned.dropped_tags = planned_tags(
                        planned.server, config, now, plan.run_id)  # fmt: skip
                if planned.dropped_tags:
                    out.warn(f"50-tag limit: instance tags not copied: "
                             f"{', '.join(planned.dropped_tags)}")  # fmt: skip
                if reason:
                    out.fail(reason)
                else:
                    guarded(out, "backup failed", back_up, clients, planned, config, now, out)
            except Exception as err:  # a bug must not hide a server: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                out.fail(f"backup failed: unexpected {type(err).__name__}: {err}")
            created.put(out)
        if any(o.post_command for _, o in pairs):
            check_post_scripts(clients.ssm, [o for _, o in pairs], config, now)
    finally:
        created.put(ALL_CREATED)


def in_place_hold(server: Server) -> str | None:
    """Why a server is not backed up now: an in-place restore is changing its disks."""
    tags = {t["Key"]: t["Value"] for t in server.instance.get("Tags", [])}
    held = tags.get(TAG_IN_PLACE)
    if not held:
        return None
    return (f"an in-place restore (run {held.split()[0]}) is changing its disks: the backup "
            "holds off until it finishes (or is rolled back)")  # fmt: skip


NOTHING_SELECTED = (
    "the config selects no server: SERVERS is empty or --server matched none, and "
    "SELECT_TAGS matches no live instance; nothing was backed up"
)


def report(
    outcomes: list[Outcome], copies: Sequence[Outcome] = (), errors: Sequence[str] = ()
) -> int:
    """Log one line per server and per copy, and a summary; return the exit code."""
    for out in [*outcomes, *copies]:
        if not out.error and not out.image_id:
            out.fail("no backup was made")  # never report a server as done without an image
        if out.late_errors:
            out.fail("; ".join(out.late_errors))
    for out in outcomes:
        for warning in out.warnings:
            log.warning("%s (%s): %s", out.name, out.instance_id, warning)
        if out.error:
            log.error("%s (%s): FAILED: %s", out.name, out.instance_id, out.error)
        else:
            pruned = f"; pruned {', '.join(out.pruned)}" if out.pruned else ""
            log.info("%s (%s): backed up as %s%s", out.name, out.instance_id, out.image_id, pruned)
    report_copies(copies)
    for error in errors:
        log.error("%s", error)
    failed = [o for o in outcomes if o.error]
    failed_copies = [c for c in copies if c.error]
    if not outcomes:  # exit 0 means every selected server is backed up: none is no backup
        log.error("%s", NOTHING_SELECTED)
        errors = [*errors, NOTHING_SELECTED]
    level = logging.ERROR if failed or failed_copies or errors else logging.INFO
    log.log(
        level,
        "%d server(s): %d backed up, %d failed",
        len(outcomes),
        len(outcomes) - len(failed),
        len(failed),
    )
    if copies:
        pending = [c for c in copies if not c.error and (not c.image or c.image.state == PENDING)]
        done = len(copies) - len(failed_copies) - len(pending)
        log.log(level, "%d copies: %d available, %d pending, %d failed", len(copies), done,
                len(pending), len(failed_copies))  # fmt: skip
    return EXIT_FAILED if failed or failed_copies or errors else EXIT_OK


def run_document(outcomes: list[Outcome], copies: Sequence[Outcome], code: int) -> dict:
    """The run for --json: each server's new image or error, and each copy's."""

    def one(out: Outcome) -> dict:
        return {"server": out.name, "instance_id": out.instance_id, "image_id": out.image_id,
                "error": out.error, "pruned": out.pruned, "warnings": out.warnings}  # fmt: skip

    return {
        "dry_run": False,
        "exit_code": code,
        "servers": [one(o) for o in outcomes],
        "copies": [
            {
                **one(c),
                "region": c.region,
                "state": c.image.state if c.image and not c.error else None,
            }
            for c in copies
        ],
        "errors": RUN_ERRORS.kept(),
    }


def report_copies(copies: Sequence[Outcome]) -> None:
    """One line per copy: available, left pending, or failed, and what its region pruned."""
    for copy in copies:
        who = f"{copy.name} ({copy.instance_id}) in {copy.region}"
        for warning in copy.warnings:
            log.warning("%s: %s", who, warning)
        pruned = f"; pruned {', '.join(copy.pruned)}" if copy.pruned else ""
        if copy.error:
            log.error("%s: copy FAILED: %s", who, copy.error)
        elif not copy.image or copy.image.state == PENDING:
            log.info("%s: copy %s still pending%s", who, copy.image_id, pruned)
        else:
            log.info("%s: copied as %s%s", who, copy.image_id, pruned)
