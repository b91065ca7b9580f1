"""--check: is every server's newest backup fresh, is every instance covered, and did the
last run succeed. Nagios-style exit codes and an optional JSON document.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ec2ami import clock
from ec2ami.backup.dr import destination_regions
from ec2ami.backup.look import check_requested, describe_instances, discover, managed_images
from ec2ami.backup.ownership import find_holdings, owners_of
from ec2ami.backup.state import LastRun, age_metrics, put_metrics
from ec2ami.backup.tags import stamp
from ec2ami.contract import TAG_DRILL
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import AVAILABLE, LIVE_INSTANCE_STATES
from ec2ami.output import print_json, print_table

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.plan import Image


def run_check(
    clients: Clients,
    config: BackupConfig,
    args: argparse.Namespace,
    others: list[tuple[str, BackupConfig]],
) -> int:
    """--check: is every server's newest backup (and copy) within RPO_HOURS, does a config
    cover every instance, and did the last run succeed in time? Only describe calls."""
    now, rpo = clock.utc_now(), config.rpo_hours or 0.0
    ec2 = clients.ec2
    servers, failures = discover(ec2, config, args.server, now)
    check_requested(args.server, servers, failures)
    listed = managed_images(ec2, config.schedule)
    gone = {o.name: o.instance_id for o in failures}
    owners = owners_of(config, servers, listed, gone)
    regions = destination_regions(clients, config)
    held = find_holdings(ec2, config.schedule, clients.region, owners, listed, regions)
    named = [(s.spec.name, s.spec.instance_id, "") for s in servers]
    named += [(o.name, o.instance_id, o.error or "") for o in failures]
    rows = [freshness(n, i, clients.region, held.natives, rpo, now, why) for n, i, why in named]
    for region in regions:
        copies = held.copies[region.name]
        rows += [freshness(n, i, region.name, copies, rpo, now, why) for n, i, why in named]
    coverage = Coverage.of(describe_instances(ec2, LIVE_FILTER), config, others, clients.region)
    if not args.server:
        coverage.notes += left_behind(listed, config, {n for n, _, _ in named}, now)
    last = LastRun.read(config.state_file, rpo, now)
    if config.metrics_namespace:
        ages = {r.server: r.age_hours for r in rows if r.region == clients.region}
        put_metrics(clients, config, age_metrics(config, ages, now))
    return print_check(rows, coverage, last, clients.region, config, args, held.impostors)


LIVE_FILTER = [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]


def left_behind(
    listed: list[Image], config: BackupConfig, named: set[str], now: datetime
) -> list[str]:
    """Servers of this pool that the config no longer selects (renamed, or their instance
    gone), whose backups stay, never pruned: one note each, with their age."""
    gone: dict[str, list[Image]] = {}
    for image in listed:
        if image.pool == config.pool and image.server and image.server not in named:
            gone.setdefault(image.server, []).append(image)
    notes = []
    for server, images in sorted(gone.items()):
        hours = (now - max(i.created for i in images)).total_seconds() / 3600
        notes.append(
            f"{len(images)} backup(s) of {server} (newest {hours:.1f} h old) stay in pool "
            f"{config.pool}, but this config selects no server of that name now: they are "
            "never pruned; rename the server back, or deregister them when no longer needed"
        )
    return notes


FRESH, STALE, MISSING, FAILING = "fresh", "stale", "missing", "failing"


@dataclass
class Freshness:
    """One server's newest available backup in one region, against RPO_HOURS."""

    server: str
    instance_id: str
    region: str
    image_id: str | None
    created: datetime | None
    age_hours: float | None
    status: str  # FRESH, STALE, MISSING, or FAILING: the run cannot back it up
    note: str = ""


def freshness(
    server: str,
    instance_id: str,
    region: str,
    images: list[Image],
    rpo: float,
    now: datetime,
    failing: str,
) -> Freshness:
    """How old a server's newest available backup among images is, and what that means."""
    mine = [i for i in images if i.server == server and i.state == AVAILABLE]
    newest = max(mine, key=lambda i: (i.created, i.image_id), default=None)
    if newest is None:
        status = FAILING if failing else MISSING
        return Freshness(server, instance_id, region, None, None, None, status, failing)
    age = (now - newest.created).total_seconds() / 3600
    status = FAILING if failing else STALE if age > rpo else FRESH
    return Freshness(
        server, instance_id, region, newest.image_id, newest.created, age, status, failing
    )


@dataclass
class Coverage:
    """The region's live instances that no config backs up, and those left out on purpose."""

    uncovered: list[dict]
    opted_out: list[dict]  # carry OPT_OUT_TAG
    autoscaled: list[dict]  # launched by an Auto Scaling group: replaced, not restored
    notes: list[str]

    @classmethod
    def of(
        cls,
        instances: list[dict],
        config: BackupConfig,
        others: list[tuple[str, BackupConfig]],
        region: str,
    ) -> Coverage:
        """Sort instances by whether this config or one of the others covers them."""
        configs, notes = [config], []
        for path, other in others:
            if other.region and other.region != region:
                notes.append(f"{path} backs up {other.region}, not {region}: not counted")
            else:
                configs.append(other)
        coverage = cls([], [], [], notes)
        for instance in instances:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            if TAG_DRILL in tags or any(covers(c, instance["InstanceId"], tags) for c in configs):
                continue  # a drill instance is a short-lived test copy, not a server
            row = {
                "instance_id": instance["InstanceId"],
                "name": tags.get("Name", ""),
                "state": instance["State"]["Name"],
            }
            if OPT_OUT_TAG in tags:
                coverage.opted_out.append(row)
            elif ASG_TAG in tags:
                coverage.autoscaled.append({**row, "group": tags[ASG_TAG]})
            else:
                coverage.uncovered.append(row)
        return coverage


# On an instance, any value: --check lists it apart instead of as not backed up.
OPT_OUT_TAG = "ec2-to-ami:skip"
ASG_TAG = "aws:autoscaling:groupName"


def covers(config: BackupConfig, instance_id: str, tags: dict[str, str]) -> bool:
    """Whether a config backs up an instance: SERVERS lists it, or it has all SELECT_TAGS."""
    if any(s.instance_id == instance_id for s in config.servers):
        return True
    return bool(config.select_tags) and all(tags.get(k) == v for k, v in config.select_tags.items())


def print_check(
    rows: list[Freshness], coverage: Coverage, last: LastRun, home: str, config: BackupConfig,
    args: argparse.Namespace, impostors: list[tuple[str, Image, str]],
) -> int:  # fmt: skip
    """Print the summary line first (for Nagios and mail subjects), then the tables;
    -q prints nothing when all is well. Return 0 all fresh, 1 otherwise."""
    rpo = config.rpo_hours or 0.0
    problems = one_line_each(
        (f"{r.server}{'' if r.region == home else ' in ' + r.region}", describe_freshness(r, rpo))
        for r in rows
        if r.status != FRESH
    )
    if not rows:
        problems.append(f"the config selects no server (SELECT_TAGS {dict(config.select_tags)} "
                        "matches no live instance)")  # fmt: skip
    problems += [
        f"{u['instance_id']} ({u['name'] or 'no Name'}): no config backs it up"
        for u in coverage.uncovered
    ]
    if last.problem:
        problems.append(last.problem)
    problems += [
        f"{image.image_id} ({image.name}) in {region} claims to be a backup of {image.server} "
        f"in this pool, but is not: {why}"
        for region, image, why in impostors
    ]
    summary = (
        f"PROBLEM: {'; '.join(problems)}"
        if problems
        else f"OK: {len(rows)} backup(s) within RPO {rpo:g} h"
    )
    if args.json:
        print_json(check_document(rows, coverage, last, rpo, problems, summary))
    elif problems or not args.quiet:
        print(summary)
        if len(problems) > 1:  # the summary is one line for Nagios and mail subjects
            print("\n".join(f"- {p}" for p in problems))
        print_check_tables(rows, coverage, last, rpo)
    return EXIT_FAILED if problems else EXIT_OK


def one_line_each(found: Iterable[tuple[str, str]]) -> list[str]:
    """One problem per line: servers with the same problem (a run that fails them all for
    one reason) share its line instead of repeating it."""
    grouped: dict[str, list[str]] = {}
    for who, what in found:
        grouped.setdefault(what, []).append(who)
    return [f"{', '.join(who)}: {what}" for what, who in grouped.items()]


def describe_freshness(row: Freshness, rpo: float) -> str:
    """A row's status in words."""
    if row.status == FAILING:
        return f"the backup run fails for it ({row.note})"
    if row.status == MISSING:
        return "no available backup"
    return f"newest backup {row.image_id} is {row.age_hours:.1f} h old (RPO {rpo:g} h)"


def print_check_tables(
    rows: list[Freshness], coverage: Coverage, last: LastRun, rpo: float
) -> None:
    """The freshness table, the instances left out, and the last run."""
    table = [("SERVER", "REGION", "NEWEST BACKUP", "CREATED (UTC)", "AGE", "RPO", "STATUS")]
    for r in rows:
        created = r.created.strftime("%Y-%m-%d %H:%M") if r.created else "-"
        age = f"{r.age_hours:.1f}h" if r.age_hours is not None else "-"
        table.append((r.server, r.region, r.image_id or "-", created, age, f"{rpo:g}h", r.status))
    print_table(table)
    for title, found in (
        ("Not backed up by any config", coverage.uncovered),
        (f"Opted out ({OPT_OUT_TAG})", coverage.opted_out),
        ("In an Auto Scaling group (not counted)", coverage.autoscaled),
    ):
        if found:
            print(f"{title}:")
            for row in found:
                group = f" (group {row['group']})" if "group" in row else ""
                print(f"  {row['instance_id']}  {row['name'] or '-'}  {row['state']}{group}")
    for note in coverage.notes:
        print(f"Note: {note}")
    if last.record:
        done = last.record
        print(
            f"Last run: finished {done['finished']}, exit {done['exit_code']}, "
            f"{done.get('servers_backed_up', '?')} backed up, {done.get('servers_failed', '?')} "
            f"failed, {done.get('images_pruned', '?')} pruned"
        )
    if last.problem:
        print(f"Last run: {last.problem}")


def check_document(
    rows: list[Freshness],
    coverage: Coverage,
    last: LastRun,
    rpo: float,
    problems: list[str],
    summary: str,
) -> dict:
    """--check --json: everything the tables show, and the problems."""
    return {
        "ok": not problems,
        "summary": summary,
        "rpo_hours": rpo,
        "backups": [
            {
                **vars(r),
                "created": stamp(r.created) if r.created else None,
                "age_hours": round(r.age_hours, 2) if r.age_hours is not None else None,
            }
            for r in rows
        ],
        "uncovered": coverage.uncovered,
        "opted_out": coverage.opted_out,
        "autoscaled": coverage.autoscaled,
        "notes": coverage.notes,
        "last_run": {"state_file": last.path, "record": last.record, "problem": last.problem},
        "problems": problems,
    }
