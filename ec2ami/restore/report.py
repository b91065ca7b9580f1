"""The report: per server the image, its age, the instance, the timings and the twin's
differences, as tables or JSON.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ec2ami.attributes import chosen_by_ec2
from ec2ami.output import print_json, print_table
from ec2ami.restore.config import RestoreConfig
from ec2ami.restore.images import backup_time
from ec2ami.restore.model import describe_launched, ids_of
from ec2ami.restore.twin import normal, shown

if TYPE_CHECKING:
    from ec2ami.restore.model import Attribute, Restore, Run

log = logging.getLogger(__name__)


def report(
    ec2: Any, restores: list[Restore], config: RestoreConfig, as_json: bool, run: Run
) -> None:
    """Print what was launched, as tables or JSON: a single restore's instances and twin
    check, or a fleet's table with each server's timings. Log each failure last."""
    rows = {i["instance_id"]: i for i in instance_rows(ec2, ids_of(restores))}
    if not config.fleet:
        [restore] = restores
        print_report(restore, [rows[i] for i in restore.ids], as_json, run)
    elif as_json:
        print_json(fleet_document(restores, rows, run))
    else:
        print_fleet(restores, rows, run, config.drill)
    for restore in restores:
        if restore.error:
            log.error("%s%s", run.prefix(restore), restore.error)


def instance_rows(ec2: Any, ids: list[str]) -> list[dict]:
    """One row per launched instance: id, state, addresses, zone and Name."""
    found = {i["InstanceId"]: i for i in describe_launched(ec2, ids)}
    rows = []
    for instance_id in ids:
        instance = found.get(instance_id, {})
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        rows.append(
            {
                "instance_id": instance_id,
                "state": instance.get("State", {}).get("Name", "unknown"),
                "private_ip": instance.get("PrivateIpAddress", ""),
                "public_ip": instance.get("PublicIpAddress", ""),
                "availability_zone": instance.get("Placement", {}).get("AvailabilityZone", ""),
                "name": tags.get("Name", ""),
            }
        )
    return rows


def restore_document(restore: Restore, rows: list[dict], run: Run) -> dict[str, Any]:
    """One server's restore for --json: its backup and the RPO it achieved, instances,
    timings (seconds into the run), twin check, warnings and error."""
    plan, image = restore.plan, restore.image or {}
    backup = backup_time(image) if image else None
    return {
        "server": restore.server,
        "image_id": image.get("ImageId"),
        "backup_time": f"{backup:%Y-%m-%dT%H:%M:%SZ}" if backup else None,
        "backup_age_seconds": round((run.utc - backup).total_seconds()) if backup else None,
        "client_token": plan.params["ClientToken"] if plan else None,
        "instances": rows,
        "timings": restore.at,
        "attributes": [attribute_json(a) for a in plan.attributes] if plan else [],
        "differences": restore.differences,
        "warnings": plan.warnings if plan else [],
        **({"check": restore.check} if restore.check else {}),
        **({"already_restored": restore.already} if restore.already else {}),
        "error": restore.error,
    }


def fleet_document(restores: list[Restore], rows: dict[str, dict], run: Run) -> dict[str, Any]:
    """A fleet's restore for --json."""
    return {
        "started": f"{run.utc:%Y-%m-%dT%H:%M:%SZ}",
        "wall_seconds": run.since(),
        "client_token": run.token,
        "servers": [restore_document(r, [rows[i] for i in r.ids], run) for r in restores],
        "failed": [r.server for r in restores if r.error],
        "already_restored": [r.server for r in restores if r.already],
    }


def print_report(restore: Restore, rows: list[dict], as_json: bool, run: Run) -> None:
    """Print a single restore's instances and twin check, as tables or as JSON."""
    if as_json:
        print_json(restore_document(restore, rows, run))
        return
    plan = restore.planned
    header = {"instance_id": "INSTANCE", "state": "STATE", "private_ip": "PRIVATE IP",
              "public_ip": "PUBLIC IP", "availability_zone": "ZONE", "name": "NAME"}  # fmt: skip
    print_table([header, *rows], list(header))
    checked = [a for a in plan.attributes if a.checked]
    if checked:
        print_twin(plan.attributes, rows[0]["instance_id"], log.isEnabledFor(logging.DEBUG))
        differences = restore.differences
        verdict = f"{len(differences)} difference(s)" if differences else "no difference"
        print(f"{verdict} in {len(checked)} attributes checked")
    if restore.at.get("run_instances_accepted") is not None:
        print(f"timings (s into the run): {timings_text(restore)}")
    print(f"client token: {plan.params['ClientToken']} (rerun with --client-token to retry safely)")


def print_twin(attributes: list[Attribute], instance_id: str, every: bool) -> None:
    """The twin table: the attributes that differ from what the original ran with, or that
    could not be checked (left out, not reproducible), and a count of those that match; -v
    lists every one."""
    matched = [a for a in attributes if a.checked and same(a)]
    shown_rows = attributes if every else [a for a in attributes if a not in matched]
    more = "" if every else " (-v lists them too)"
    print()
    print(f"The twin, read back from {instance_id}: {len(matched)} attribute(s) as the "
          f"original ran them{more}")  # fmt: skip
    if not shown_rows:
        return
    columns = ["attribute", "recorded", "now", "origin", "check"]
    table = [{c: c.upper() for c in columns}]
    for a in shown_rows:
        check = ("ok" if same(a) else "DIFFERS") if a.checked else ""
        now = shown(a.now) if a.checked else "(not checked)"
        table.append({"attribute": a.name, "recorded": shown(a.recorded), "now": now,
                      "origin": a.origin, "check": check})  # fmt: skip
    print_table(table, columns)


TIMINGS = [("image_resolved", "resolved"), ("run_instances_accepted", "accepted"),
           ("running", "running"), ("status_ok", "status-ok"),
           ("check_passed", "checked")]  # fmt: skip


def timings_text(restore: Restore) -> str:
    """A server's timings in words."""
    return ", ".join(f"{label} {restore.at[key]:.1f}" for key, label in TIMINGS
                     if key in restore.at)  # fmt: skip


def print_fleet(restores: list[Restore], rows: dict[str, dict], run: Run, drill: bool) -> None:
    """A fleet's table: per server its backup and age (the RPO achieved), instance, the
    seconds into the run at each step, the twin check and the result."""
    columns = ["server", "image", "backup age", "instance", "state",
               *(label for _, label in TIMINGS), "twin", "result"]  # fmt: skip
    table = [{c: c.upper() for c in columns}]
    for restore in restores:
        image = restore.image or {}
        first = rows.get(restore.ids[0], {}) if restore.ids else {}
        if restore.already:
            first = {"instance_id": restore.already[0], "state": "running before"}
        age = (run.utc - backup_time(image)).total_seconds() if image else None
        checked = [a for a in restore.plan.attributes if a.checked] if restore.plan else []
        twin = f"{len(restore.differences)} diff" if checked else "-"
        row = {"server": restore.server, "image": image.get("ImageId", "-"),
               "backup age": duration(age), "instance": first.get("instance_id", "-"),
               "state": first.get("state", "-"), "twin": twin,
               "result": "FAILED" if restore.error else
               "already restored" if restore.already else "ok"}  # fmt: skip
        row.update({label: f"{restore.at[key]:.1f}" if key in restore.at else "-"
                    for key, label in TIMINGS})  # fmt: skip
        table.append(row)
    print_table(table, columns)
    failed = [r.server for r in restores if r.error]
    done = "verified by a drill (and terminated)" if drill else "restored"
    summary = f"{len(restores) - len(failed)} of {len(restores)} servers {done} in "
    already = [r.server for r in restores if r.already]
    print(summary + f"{run.since():.1f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; already restored before: {', '.join(already)}" if already else ""))  # fmt: skip
    if not drill:
        print(f"client token: {run.token} (rerun with --client-token to retry safely)")


def duration(seconds: float | None) -> str:
    """A backup's age for a person: 42m, 5h07m, 3d04h."""
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def same(attribute: Attribute) -> bool:
    """Whether a checked attribute came out as planned."""
    if attribute.planned is None and chosen_by_ec2(attribute.name):
        return True
    return normal(attribute.now) == normal(attribute.planned)


def attribute_json(attribute: Attribute) -> dict[str, Any]:
    """One attribute for --json."""
    made = {"name": attribute.name, "recorded": attribute.recorded,
            "planned": attribute.planned, "origin": attribute.origin}  # fmt: skip
    if attribute.checked:
        made.update(now=attribute.now, same=same(attribute))
    return made
