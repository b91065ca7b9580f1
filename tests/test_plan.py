"""The dry run shows exactly what the run then does: the same creates, copies and prunes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from ec2ami import clock
from tests.conftest import backup_config, managed, run

DR = "us-west-2"


def planned(stdout: str) -> dict[str, set]:
    """The creates, copies and deregistrations (with their region) a dry run printed."""
    plan: dict[str, set] = {"create": set(), "copy": set(), "deregister": set()}
    for line in stdout.splitlines():
        if match := re.match(r"Would create image (\S+) of ", line):
            plan["create"].add(match[1])
        elif match := re.match(r"Would copy (\S+) \(\S+\) to (\S+)", line):
            plan["copy"].add((match[1], match[2]))
        elif match := re.match(r"Would deregister (ami-\w+) .*?(?: in ([a-z0-9-]+))?: ", line):
            plan["deregister"].add((match[1], match[2] or "us-east-1"))
    return plan


def done(calls) -> dict[str, set]:
    """The same, as the endpoint saw the run make them."""
    made: dict[str, set] = {"create": set(), "copy": set(), "deregister": set()}
    for call in calls:
        if call.status >= 400:
            continue
        if call.action == "CreateImage":
            made["create"].add(call.params["Name"])
        elif call.action == "CopyImage":
            made["copy"].add((call.params["Name"], call.region))
        elif call.action == "DeregisterImage":
            made["deregister"].add((call.params["ImageId"], call.region))
    return made


@pytest.mark.parametrize("flags", [[], ["--no-prune"]])
def test_the_dry_run_plans_exactly_what_the_run_does(ec2, fleet, tmp_path, endpoint, flags):
    dr = boto3.client("ec2", region_name=DR, endpoint_url=endpoint.url)
    config = backup_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1}})
    assert run("ec2_to_ami.py", config).returncode == 0
    ec2.terminate_instances(InstanceIds=[fleet.instances["app01"]])  # a failure, known up front
    an_hour_on = datetime.now(timezone.utc) + timedelta(hours=1)
    ec2_to_ami_now = pytest.MonkeyPatch()
    ec2_to_ami_now.setattr(clock, "utc_now", lambda: an_hour_on)  # one set of names
    try:
        dry = run("ec2_to_ami.py", config, "--dry-run", *flags)
        start = len(endpoint.calls)
        real = run("ec2_to_ami.py", config, *flags)
    finally:
        ec2_to_ami_now.undo()
    assert dry.returncode == real.returncode == 1
    assert "Would fail app01" in dry.stdout and "app01" in real.stderr
    plan, made = planned(dry.stdout), done(endpoint.calls[start:])
    assert plan == made
    assert len(plan["create"]) == 2 and len(plan["copy"]) == 2
    assert len(plan["deregister"]) == (0 if flags else 4)  # web01 and win01, in both regions
    if not flags:
        assert len(managed(ec2, "app01")) == 1 and len(managed(dr, "app01")) == 1  # kept
