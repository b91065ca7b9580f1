"""--drill: restore into isolation, check through SSM, always clean up, and record the
result on the image and in DRILL_LOG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import uuid
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.contract import TAG_DRILL_RUN, TAG_VERIFIED, TOOL
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.live import progress
from ec2ami.restore.checks import drill_check
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.launch import progress_rows, run_restores
from ec2ami.restore.leftovers import (
    drill_deadline,
    find_leftovers,
    log_leftovers,
    remove_leftovers,
    show_leftovers,
    terminate,
)
from ec2ami.restore.listing import dry_run
from ec2ami.restore.model import Run, ids_of
from ec2ami.restore.report import report, restore_document
from ec2ami.restore.run import prepare

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.restore.model import Restore

log = logging.getLogger(__name__)


def drill(clients: Clients, config: RestoreConfig, args: argparse.Namespace) -> int:
    """Restore each server into DRILL_SUBNET_ID, wait for status-ok, run DRILL_CHECK, and
    terminate its instance whatever happens (pass, fail, Ctrl-C, SIGTERM, an exception).
    Tag each image verified (ok or failed), append to DRILL_LOG, report. First, terminate
    what earlier drills left behind (ec2ami.restore.leftovers). Exit 1 if any server
    failed."""
    run = Run(config.fleet)
    run.token = args.client_token or f"{TOOL}-{uuid.uuid4().hex}"
    config = drill_config(config, run)
    ec2 = clients.ec2
    try:
        leftovers = find_leftovers(ec2, config, run)
    except AWS_ERRORS as err:
        raise RestoreError(f"AWS error looking for what earlier drills left: "
                           f"{error_text(err)}") from None  # fmt: skip
    if args.dry_run:
        show_leftovers(leftovers)
    else:
        remove_leftovers(ec2, leftovers)
        log_leftovers(config, leftovers, run)
    try:
        restores = prepare(clients, config, args, run)
    except AWS_ERRORS as err:
        raise RestoreError(f"AWS error: {error_text(err)}") from None
    if restores is None or args.dry_run:
        return EXIT_OK if restores is None else dry_run(ec2, restores, config, args.json)
    interrupted = False
    try:
        rows = partial(progress_rows, restores, config.wait, run)
        with sigterm_interrupts(), progress("drill", rows, args.quiet):
            run_restores(clients, config, restores, run)
    except KeyboardInterrupt:
        interrupted = True
    finally:  # what this run launched, and what a RunInstances cut short launched unseen
        launched = sorted(set(ids_of(restores)) | set(launched_by(ec2, run)))
        if launched:
            terminate(ec2, launched, "the drill is over")
    if interrupted:
        log.error("drill interrupted: its instances were terminated; no image was tagged")
        return EXIT_FAILED
    recorded = record_drill(clients, config, restores, run)
    report(ec2, restores, config, args.json, run)
    return EXIT_FAILED if not recorded or any(r.error for r in restores) else EXIT_OK


def drill_config(config: RestoreConfig, run: Run) -> RestoreConfig:
    """The config a drill restores with: in DRILL_SUBNET_ID with DRILL_SECURITY_GROUP_IDS on
    new addresses, with no public IP, Elastic IP, load balancer or DNS record, removable
    (termination protection off, every volume and interface deleted with it), tagged
    with its deadline, and waited on until status-ok within DRILL_TIMEOUT_MINUTES of its
    launch. Production's placement is left out in plan.planned_attributes."""
    return replace(
        config,
        instance_type=config.drill_instance_type or config.instance_type,
        network_interfaces=None, subnet_id=None, security_group_ids=None,
        private_ip=None, public_ip=False, elastic_ip=None, target_groups=[],
        classic_load_balancers=[], dns_records=[], name=None, count=1,
        termination_protection=False, wait="status-ok",
        wait_timeout_minutes=config.drill_timeout_minutes,
        delete_on_termination=True, drill_stamp=f"{run.utc:%Y%m%dT%H%M%SZ}",
        drill_run=run.token, drill_deadline=drill_deadline(config, run),
    )  # fmt: skip


def launched_by(ec2: Any, run: Run) -> list[str]:
    """The live instances tagged with this drill run's id: those an interruption in the
    middle of RunInstances launched without the run seeing their ids. An instance EC2
    does not describe yet is left to the next drill's sweep."""
    filters = [
        {"Name": f"tag:{TAG_DRILL_RUN}", "Values": [run.token]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ]
    try:
        pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
    except AWS_ERRORS as err:
        log.error("could not look for this drill's instances: %s", error_text(err))
        return []


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (from kill, systemd or cron's timeout) interrupts like Ctrl-C, so the
    drill still terminates its instances."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_drill(
    clients: Clients, config: RestoreConfig, restores: list[Restore], run: Run
) -> bool:
    """Tag each drilled image with TAG_VERIFIED, and append one JSON line per server to
    DRILL_LOG; False if DRILL_LOG could not be written (a failed tag fails its server)."""
    lines = []
    for restore in restores:
        ok = not restore.error
        if restore.image:  # a plan or check that failed is a failed restore too
            value = verified_value(restore, config, run)
            try:
                clients.ec2.create_tags(Resources=[restore.image["ImageId"]],
                                        Tags=[{"Key": TAG_VERIFIED, "Value": value}])  # fmt: skip
            except AWS_ERRORS as err:
                restore.problems.append(f"could not tag {restore.image['ImageId']} "
                                        f"{TAG_VERIFIED}: {error_text(err)}")  # fmt: skip
        entry = restore_document(restore, [], run)
        kept = ("server", "image_id", "backup_time", "backup_age_seconds", "timings", "error")
        lines.append({
            "drill": f"{run.utc:%Y-%m-%dT%H:%M:%SZ}", "result": "ok" if ok else "failed",
            "instance_ids": restore.ids,
            "instance_type": restore.plan.params["InstanceType"] if restore.plan else None,
            **{k: entry[k] for k in kept},
        })  # fmt: skip
    if config.drill_log:
        try:
            with open(config.drill_log, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(line) + "\n" for line in lines)
        except OSError as err:
            log.error("could not append to DRILL_LOG %s: %s", config.drill_log, err.strerror)
            return False
    return True


def verified_value(restore: Restore, config: RestoreConfig, run: Run) -> str:
    """TAG_VERIFIED: "<UTC time> ok|failed status-ok=<s>s check=<s>s" (the seconds from
    RunInstances accepted; "-" for a step not reached, "none" when there is no check)."""
    accepted = restore.at.get("run_instances_accepted")

    def after(key: str) -> str:
        if accepted is None or key not in restore.at:
            return "-"
        return f"{restore.at[key] - accepted:.0f}s"

    checked = restore.plan is None or drill_check(config, restore)
    check = after("check_passed") if checked else "none"
    result = "failed" if restore.error else "ok"
    return f"{run.utc:%Y-%m-%dT%H:%M:%SZ} {result} status-ok={after('status_ok')} check={check}"
