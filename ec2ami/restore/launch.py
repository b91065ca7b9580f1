"""Do it: launch each server at RunInstances' pace, poll the fleet together with one
describe per kind, and set each instance up as it reaches running.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami import polling
from ec2ami.aws import AWS_ERRORS, CAPACITY_ERRORS, error_text
from ec2ami.facts import (
    DISABLED,
    ERR_TOKEN_MISMATCH,
    PENDING,
    RUNNING,
    SSM_NEEDS,
    STATUS_IDS_MAX,
    STATUS_OK,
)
from ec2ami.restore.checks import advance_checks, drill_check
from ec2ami.restore.config import RestoreConfig
from ec2ami.restore.model import LaunchError, describe_launched, failing, ids_of
from ec2ami.restore.prelaunch import settle_elastic_ip
from ec2ami.restore.setup import set_up
from ec2ami.restore.twin import check_twins

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.restore.model import Restore, Run

log = logging.getLogger(__name__)


def run_restores(
    clients: Clients, config: RestoreConfig, restores: list[Restore], run: Run
) -> None:
    """Launch each planned server at RunInstances' pace and, between launches, poll all
    launched instances together: set each up as it reaches running, and check its twin
    once it reaches what WAIT asks. One server's failure never stops the others."""
    todo = [r for r in restores if r.plan and not r.problems]
    waiting: list[Restore] = []
    delay = polling.POLL_FIRST_SECONDS
    next_poll = time.monotonic() + delay
    while todo or waiting:
        if todo:
            restore = todo.pop(0)
            start(clients, config, restore, run)  # waits for a RunInstances token first
            waiting += [restore] if restore.stage != "done" else []
            if not todo:  # the last launch: look again soon, whatever the backoff
                delay, next_poll = (
                    polling.POLL_FIRST_SECONDS,
                    time.monotonic() + polling.POLL_FIRST_SECONDS,
                )
        if waiting and time.monotonic() >= next_poll:
            advance(clients, config, waiting, run)
            waiting = [r for r in waiting if r.stage != "done"]
            next_poll = time.monotonic() + delay
            delay = min(delay * polling.POLL_FACTOR, polling.POLL_MAX_SECONDS)
        if waiting and not todo:
            time.sleep(max(0.0, next_poll - time.monotonic()))


def progress_rows(restores: list[Restore], wait: str, run: Run) -> list[tuple[str, bool]]:
    """Each server's line for live.progress: its stage, instances, how long since its
    launch and what it waits for (read from the live thread: it only reads)."""
    waits = {"planned": "waits its turn at RunInstances' pace", "launched": "waits for running",
             "running": f"waits for {wait}", "ok": "being set up",
             "checking": "runs DRILL_CHECK"}  # fmt: skip
    rows = []
    for r in list(restores):
        ids = ", ".join(r.ids) or "not launched"
        what = ("FAILED" if r.problems else "done") if r.stage == "done" else waits.get(r.stage, "")
        launched = r.at.get("run_instances_accepted")
        since = f", {run.since() - launched:.0f} s since launch" if launched is not None else ""
        rows.append((f"{r.server} {r.stage} ({ids}){since}: {what}", r.stage == "done"))
    return rows


def start(clients: Clients, config: RestoreConfig, restore: Restore, run: Run) -> None:
    """RunInstances for each instance of the server's plan (one call each, so each has its
    own Name), then decide which Elastic IPs to associate once it runs."""
    ec2, plan = clients.ec2, restore.planned
    try:
        if plan.image["State"] == DISABLED:
            ec2.enable_image(ImageId=plan.image["ImageId"])
            log.info("enabled %s, which was disabled, to launch from it", plan.image["ImageId"])
        for params in [plan.params, *plan.others]:
            response = ec2.run_instances(**params)
            restore.ids += [i["InstanceId"] for i in response["Instances"]]
    except AWS_ERRORS as err:
        if not restore.ids:
            hint = capacity_hint(err, plan.params) or token_hint(ec2, err, plan.params)
            restore.fail(f"AWS error: {error_text(err)}{hint}")
            return
        restore.problems.append(f"launching the rest failed: {error_text(err)}")
    restore.at["run_instances_accepted"] = run.since()
    restore.deadline = time.monotonic() + config.wait_timeout_minutes * 60
    log.info("%slaunched %s from %s (client token %s)", run.prefix(restore),
             ", ".join(restore.ids), plan.image["ImageId"], plan.params["ClientToken"])  # fmt: skip
    with failing(restore):
        restore.allocations = [e for e in plan.elastic_ips if settle_elastic_ip(
            ec2, plan, config, restore.ids, e["allocation"])]  # fmt: skip
    after = bool(restore.allocations or plan.source_dest_off or plan.target_groups
                 or plan.dns_records or plan.classic_load_balancers)  # fmt: skip
    if restore.stage != "done":
        restore.stage = "launched" if after or config.wait != "none" else "done"


def capacity_hint(err: Exception, params: dict) -> str:
    """What to do when EC2 has no capacity for the launch (not retried: aws.CAPACITY_ERRORS)."""
    if not isinstance(err, ClientError) or err.response["Error"].get("Code") not in CAPACITY_ERRORS:
        return ""
    return (
        f"; EC2 has no {params['InstanceType']} capacity there now: set INSTANCE_TYPE to "
        "another type, or SUBNET_ID to a subnet in another zone, or try again later"
    )


def token_hint(ec2: Any, err: Exception, params: dict) -> str:
    """What to do when EC2 refuses a client token it saw with other parameters: most often
    a rerun with --client-token after a newer backup was made, so this run picked it."""
    if not isinstance(err, ClientError) or err.response["Error"].get("Code") != ERR_TOKEN_MISMATCH:
        return ""
    token = params["ClientToken"]
    try:
        answer = ec2.describe_instances(Filters=[{"Name": "client-token", "Values": [token]}])
        found = [i for r in answer["Reservations"] for i in r["Instances"]]
    except AWS_ERRORS:
        found = []
    if not found:
        return (f"; client token {token} was used for another launch: drop --client-token "
                "to start a new restore")  # fmt: skip
    ids, image = ", ".join(i["InstanceId"] for i in found), found[0]["ImageId"]
    if image != params["ImageId"]:
        return (f"; this client token launched {ids} from {image}, not {params['ImageId']} "
                f"(a newer backup since?): add --ami {image} to finish that restore, or drop "
                "--client-token to start a new one")  # fmt: skip
    return (f"; this client token launched {ids} with other settings (INSTANCE_TYPE, COUNT, "
            "subnet, ...): rerun with that run's settings, or drop --client-token")  # fmt: skip


def advance(clients: Clients, config: RestoreConfig, waiting: list[Restore], run: Run) -> None:
    """One poll of the whole fleet: one DescribeInstances for the instances not yet
    running, one DescribeInstanceStatus for those running (100 a call); then set up what
    just started running, and check the twins of what just got where WAIT asks."""
    ec2 = clients.ec2
    launched = [r for r in waiting if r.stage == "launched"]
    if launched:
        found = {i["InstanceId"]: i for i in describe_launched(ec2, ids_of(launched))}
        for restore in launched:
            with failing(restore):
                if not running([found.get(i) for i in restore.ids]):
                    continue
                restore.at["running"] = run.since()
                set_up(clients, restore.planned, config, restore.ids, restore.allocations, found)
                stages = {"none": "done", "running": "ok", "status-ok": "running"}
                restore.stage = stages[config.wait]
    started = [r for r in waiting if r.stage == "running"]
    if started:
        ok = statuses_ok(ec2, ids_of(started))
        for restore in started:
            if set(restore.ids) <= ok:
                restore.at["status_ok"], restore.stage = run.since(), "ok"
    ready = [r for r in waiting if r.stage == "ok"]
    if ready:
        check_twins(clients, ready)
        for restore in ready:
            if restore.stage == "ok":
                restore.stage = "checking" if drill_check(config, restore) else "done"
    if config.drill:
        advance_checks(clients, config, [r for r in waiting if r.stage == "checking"], run)
    timeout = "DRILL_TIMEOUT_MINUTES" if config.drill else "WAIT_TIMEOUT_MINUTES"
    for restore in waiting:
        if restore.stage == "done" or time.monotonic() < restore.deadline:
            continue
        if restore.stage == "checking" and "command_id" not in restore.check:
            restore.fail(f"SSM never had {restore.ids[0]} online before {timeout} ran out, so "
                         f"DRILL_CHECK could not run: it needs {SSM_NEEDS}")  # fmt: skip
            continue
        what = {"launched": "running", "running": "status checks ok",
                "checking": "through DRILL_CHECK"}.get(restore.stage, "done")  # fmt: skip
        restore.fail(f"instances not {what} before {timeout} ran out")


def running(instances: list[dict | None]) -> bool:
    """Whether every instance is running (one not yet visible is not); an instance that
    died raises LaunchError."""
    for instance in filter(None, instances):
        state = instance["State"]["Name"]
        if state not in (PENDING, RUNNING):
            reason = instance.get("StateReason", {}).get("Message", "no reason given")
            raise LaunchError(f"instance {instance['InstanceId']} is {state}: {reason}")
    return all(i and i["State"]["Name"] == RUNNING for i in instances)


def statuses_ok(ec2: Any, ids: list[str]) -> set[str]:
    """The instances that pass their instance and system status checks (100 ids a call)."""
    ok = set()
    for start in range(0, len(ids), STATUS_IDS_MAX):
        batch = ids[start : start + STATUS_IDS_MAX]
        statuses = ec2.describe_instance_status(InstanceIds=batch, IncludeAllInstances=True)
        ok |= {
            s["InstanceId"]
            for s in statuses.get("InstanceStatuses", [])
            if s.get("InstanceStatus", {}).get("Status") == STATUS_OK
            and s.get("SystemStatus", {}).get("Status") == STATUS_OK
        }
    return ok
