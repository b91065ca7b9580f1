"""Restore drills: each backup restored into an isolated subnet, checked, always cleaned
up, and the result recorded on the image, in DRILL_LOG and in both scripts' --list."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess

from ec2ami.restore.cli import parse_args
from localaws.endpoint import SETTINGS, age_instance
from localaws.fleet import ROOT
from tests.conftest import (
    backup_config,
    documented,
    drill_config,
    later,
    managed,
    run,
    script_command,
    tags_of,
    wait_for,
    write_config,
)

CHECKS = {"linux": "systemctl is-active nginx", "windows": "Get-Service W3SVC"}


def drill_instances(ec2) -> list[dict]:
    filters = [{"Name": "tag-key", "Values": ["ec2-to-ami:drill"]}]
    return [i for r in ec2.describe_instances(Filters=filters)["Reservations"]
            for i in r["Instances"]]  # fmt: skip


def nothing_left(ec2) -> bool:
    """No drill instance runs, and no drill volume or network interface exists."""
    tagged = [{"Name": "tag-key", "Values": ["ec2-to-ami:drill"]}]
    volumes = ec2.describe_volumes(Filters=tagged)["Volumes"]
    interfaces = ec2.describe_network_interfaces(Filters=tagged)["NetworkInterfaces"]
    running = [i for i in drill_instances(ec2) if i["State"]["Name"] != "terminated"]
    return not (volumes or interfaces or running)


def verified(ec2, server: str) -> str:
    return tags_of(managed(ec2, server)[0]).get("ec2-to-ami:verified", "")


def test_a_drill_of_three_servers_checks_them_isolated_then_leaves_nothing_running(
    ec2, endpoint, drilled, tmp_path
):
    config = drill_config(tmp_path, drilled, DRILL_CHECK=CHECKS, DRILL_INSTANCE_TYPE="t3.micro")
    result = run("ami_to_ec2.py", config, "--drill", "--all")
    assert result.returncode == 0, result.stderr
    instances = drill_instances(ec2)
    assert len(instances) == 3
    for instance in instances:
        tags = tags_of(instance)
        server = tags["ec2-to-ami:drill"]
        assert instance["State"]["Name"] == "terminated"
        assert instance["SubnetId"] == drilled.drill_subnet
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [drilled.drill_group]
        assert instance["InstanceType"] == "t3.micro"
        assert tags["Name"].startswith(f"{server}-drill-") and tags["Name"].endswith("Z")
        assert tags["ec2-to-ami:restored-from"] == managed(ec2, server)[0]["ImageId"]
        assert "Backup" not in tags  # the tag the backup selects win01 by is left off
        assert tags["ec2-to-ami:drill-run"].startswith("ec2-to-ami-")
    # The originals and their Elastic IP are untouched.
    for instance_id in drilled.instances.values():
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        assert state["Instances"][0]["State"]["Name"] == "running"
    [address] = ec2.describe_addresses(AllocationIds=[drilled.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == drilled.instances["web01"]
    for server in ("web01", "app01", "win01"):
        when, outcome, status_ok, check = verified(ec2, server).split()
        assert when.endswith("Z") and outcome == "ok"
        assert re.fullmatch(r"status-ok=\d+s", status_ok) and re.fullmatch(r"check=\d+s", check)
    # Each instance is checked once, with its platform's document; the instances that
    # pass their status checks in the same poll share one command.
    sent = [c.params for c in endpoint.calls if c.action == "SendCommand" and c.status < 400]
    platform = {i["InstanceId"]: i.get("Platform", "linux") for i in instances}
    documents = {"linux": "AWS-RunShellScript", "windows": "AWS-RunPowerShellScript"}
    targets = [(i, p["DocumentName"]) for p in sent for i in json.loads(p["InstanceIds"])]
    assert sorted(targets) == sorted((i, documents[p]) for i, p in platform.items())
    assert len(sent) <= 3
    lines = [json.loads(line) for line in (tmp_path / "drill.log").read_text().splitlines()]
    assert sorted(line["server"] for line in lines) == ["app01", "web01", "win01"]
    for line in lines:
        assert line["result"] == "ok" and line["error"] is None
        assert line["instance_type"] == "t3.micro"
        assert {"running", "status_ok", "check_passed"} <= set(line["timings"])
    for script in ("ami_to_ec2.py", "ec2_to_ami.py"):
        config_ = drill_config(tmp_path, drilled) if script == "ami_to_ec2.py" else (
            backup_config(tmp_path, drilled))  # fmt: skip
        listing = run(script, config_, "--list").stdout.splitlines()
        assert listing[0].split()[-1] == "VERIFIED"
        assert all(line.split()[-1] == "ok" for line in listing[1:]), listing


def test_a_failed_check_tags_the_image_failed_and_exits_1(ec2, drilled, tmp_path):
    SETTINGS.ssm_results = {"systemctl": "Failed"}
    config = drill_config(tmp_path, drilled, DRILL_CHECK=CHECKS)
    result = run("ami_to_ec2.py", config, "--drill", "--server", "web01", "--server", "win01")
    assert result.returncode == 1
    assert re.search(
        r"web01: after launching i-\w+: DRILL_CHECK Failed on i-\w+ \(command "
        r"[\w-]+, exit code 1\)",
        result.stderr,
    ), result.stderr
    assert verified(ec2, "web01").split()[1] == "failed"
    assert verified(ec2, "win01").split()[1] == "ok"
    assert "ec2-to-ami:verified" not in tags_of(managed(ec2, "app01")[0])
    assert all(i["State"]["Name"] == "terminated" for i in drill_instances(ec2))
    assert nothing_left(ec2)
    assert "FAILED" in result.stdout


def test_a_drill_without_its_subnet_and_groups_is_a_config_error(endpoint, drilled, tmp_path):
    for settings in ({}, {"DRILL_SUBNET_ID": drilled.drill_subnet}):
        config = write_config(tmp_path / "d.py", **settings)
        result = run("ami_to_ec2.py", config, "--drill", "--all")
        assert result.returncode == 2
        assert "a drill needs DRILL_SUBNET_ID and DRILL_SECURITY_GROUP_IDS" in result.stderr
    bad_settings = [
        ({"DRILL_CHECK": 3}, "DRILL_CHECK must be"),
        ({"DRILL_PICK": "oldest"}, "DRILL_PICK must be one of"),
        ({"DRILL_TIMEOUT_MINUTES": 0}, "DRILL_TIMEOUT_MINUTES must be"),
    ]
    for bad, message in bad_settings:
        config = drill_config(tmp_path, drilled, **bad)
        result = run("ami_to_ec2.py", config, "--drill", "--all")
        assert result.returncode == 2 and message in result.stderr
    assert endpoint.count("RunInstances", ok=True) == 3  # the fleet fixture's own


def test_random_pick_drills_an_older_backup_too(ec2, drilled, tmp_path, monkeypatch):
    assert run("ec2_to_ami.py", backup_config(tmp_path, drilled)).returncode == 0
    older, newer = sorted(managed(ec2, "web01"), key=lambda i: tags_of(i)["ec2-to-ami:created"])
    monkeypatch.setattr(random.SystemRandom, "choice", lambda self, seq: seq[-1])
    config = drill_config(tmp_path, drilled, DRILL_PICK="random")
    assert run("ami_to_ec2.py", config, "--drill", "--server", "web01").returncode == 0
    found = {i["ImageId"]: tags_of(i) for i in managed(ec2, "web01")}
    assert found[older["ImageId"]]["ec2-to-ami:verified"].split()[1] == "ok"
    assert "ec2-to-ami:verified" not in found[newer["ImageId"]]


def start_drill(endpoint, config, *args) -> subprocess.Popen:
    """A drill as cron runs it: a process of its own."""
    return subprocess.Popen(
        script_command("ami_to_ec2.py", config, "--drill", *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ}, cwd=ROOT,
    )  # fmt: skip


def live_drill_instances(ec2) -> list[str]:
    return [i["InstanceId"] for i in drill_instances(ec2)
            if i["State"]["Name"] in ("pending", "running")]  # fmt: skip


def test_a_drill_killed_by_sigkill_is_cleaned_up_by_the_next_and_never_backed_up(
    ec2, endpoint, drilled, tmp_path, monkeypatch
):
    SETTINGS.instance_pending_seconds = 120  # the drill waits; it is killed meanwhile
    config = drill_config(tmp_path, drilled, DRILL_TIMEOUT_MINUTES=5)
    process = start_drill(endpoint, config, "--all")
    try:
        wait_for(lambda: len(live_drill_instances(ec2)) == 3, "the drill's three instances")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    left = live_drill_instances(ec2)
    assert len(left) == 3
    # A backup run meanwhile selects by SELECT_TAGS, and never picks up a drill instance.
    before = {i["ImageId"] for i in managed(ec2)}
    assert run("ec2_to_ami.py", backup_config(tmp_path, drilled)).returncode == 0
    made = [i for i in managed(ec2) if i["ImageId"] not in before]
    assert sorted(tags_of(i)["ec2-to-ami:server"] for i in made) == ["app01", "web01", "win01"]
    assert not {tags_of(i)["ec2-to-ami:instance-id"] for i in made} & set(left)
    # Nor does --check count one as an instance left without backups.
    checked = run("ec2_to_ami.py", backup_config(tmp_path, drilled), "--check", "--json")
    assert documented(checked, "backup-check")["uncovered"] == []
    # Before their deadline (DRILL_TIMEOUT_MINUTES x 2 after their drill began), they may
    # belong to a drill still running.
    SETTINGS.instance_pending_seconds = 0.2
    assert run("ami_to_ec2.py", config, "--drill", "--server", "web01").returncode == 0
    assert sorted(live_drill_instances(ec2)) == sorted(left)
    later(monkeypatch, 11)
    result = run("ami_to_ec2.py", config, "--drill", "--server", "web01")
    assert result.returncode == 0, result.stderr
    assert live_drill_instances(ec2) == []
    assert nothing_left(ec2)
    assert "left by an earlier drill" in result.stderr


def test_sigterm_ends_a_drill_with_its_instances_terminated_and_no_traceback(
    ec2, endpoint, drilled, tmp_path
):
    SETTINGS.instance_pending_seconds = 120
    process = start_drill(endpoint, drill_config(tmp_path, drilled), "--server", "web01")
    try:
        wait_for(lambda: len(live_drill_instances(ec2)) == 1, "the drill's instance")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in stderr and "drill interrupted" in stderr
    assert live_drill_instances(ec2) == []
    assert "ec2-to-ami:verified" not in tags_of(managed(ec2, "web01")[0])


def test_the_backup_records_the_tag_keys_it_selects_by(ec2, drilled):
    keys = tags_of(managed(ec2, "win01")[0])["ec2-to-ami:select-tag-keys"]
    assert json.loads(keys) == ["Backup"]


def test_the_shipped_weekly_drill_lines_parse_as_quiet_drills_of_every_server():
    lines = [
        line
        for path in [ROOT / "crontab.example", *sorted((ROOT / "docs" / "systemd").iterdir())]
        for line in path.read_text().splitlines()
        if "ami_to_ec2.py --config" in line and not line.startswith("#")
    ]
    assert len(lines) == 2  # cron, and the systemd service
    for line in lines:
        args = parse_args(shlex.split(line.split("ami_to_ec2.py", 1)[1]))
        assert args.drill and args.all and args.quiet
        assert args.config == "/etc/ec2-backup/drill.py"


def test_an_instance_whose_run_instances_answer_was_lost_is_terminated_too(
    ec2, endpoint, drilled, tmp_path
):
    # EC2 launched it, but the drill never heard back: it is found by the run's tag.
    endpoint.inject("RunInstances", "Unsupported", 400, lost=True)
    result = run("ami_to_ec2.py", drill_config(tmp_path, drilled), "--drill", "--server", "web01")
    assert result.returncode == 1 and "ERROR AWS error: Unsupported" in result.stderr
    [instance] = drill_instances(ec2)
    assert instance["State"]["Name"] == "terminated"
    assert verified(ec2, "web01").split()[1] == "failed"


def test_a_drill_dry_run_shows_the_isolated_plans_and_the_leftovers_and_changes_nothing(
    ec2, endpoint, drilled, tmp_path
):
    left = ec2.run_instances(
        ImageId=managed(ec2, "web01")[0]["ImageId"], MinCount=1, MaxCount=1,
        SubnetId=drilled.drill_subnet, TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "ec2-to-ami:drill", "Value": "web01"}]}],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    age_instance(left, 25 * 3600)  # made before drills wrote deadlines: a day old
    before = len(endpoint.calls)
    result = run("ami_to_ec2.py", drill_config(tmp_path, drilled), "--drill", "--all", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"Would terminate {left}, left by an earlier drill" in result.stdout
    for server in ("app01", "web01", "win01"):
        plan = result.stdout.split(f"== {server}")[1].split("== ")[0]
        assert f"subnet:                 {drilled.drill_subnet}" in plan
        assert f"security groups:        {drilled.drill_group}" in plan
        assert (
            "Elastic IP:             none" in plan
            and f"name:                   {server}-drill-" in plan
        )
    calls = endpoint.calls[before:]
    assert not [c for c in calls if c.action in ("TerminateInstances", "CreateTags")]
    assert all(c.params.get("DryRun") == "true" for c in calls if c.action == "RunInstances")
    assert live_drill_instances(ec2) == [left]


class Every:
    """Holds every instance id: SSM sees no instance online."""

    def __contains__(self, _: object) -> bool:
        return True


def test_a_check_ssm_cannot_deliver_fails_in_time_and_says_what_the_image_needs(
    ec2, drilled, tmp_path
):
    SETTINGS.ssm_offline = Every()
    config = drill_config(tmp_path, drilled, DRILL_CHECK=CHECKS, DRILL_TIMEOUT_MINUTES=0.04)
    result = run("ami_to_ec2.py", config, "--drill", "--server", "web01")
    assert result.returncode == 1
    assert "DRILL_CHECK could not run: it needs SSM Agent running" in result.stderr
    _, outcome, status_ok, check = verified(ec2, "web01").split()
    assert (outcome, check) == ("failed", "check=-") and status_ok != "status-ok=-"
    assert live_drill_instances(ec2) == []


def test_a_drill_log_that_cannot_be_written_fails_the_drill_but_not_the_record(
    ec2, drilled, tmp_path
):
    config = drill_config(tmp_path, drilled)
    config.write_text(config.read_text() + f"DRILL_LOG = {str(tmp_path / 'no' / 'x.log')!r}\n")
    result = run("ami_to_ec2.py", config, "--drill", "--server", "web01")
    assert result.returncode == 1
    assert "could not append to DRILL_LOG" in result.stderr
    assert verified(ec2, "web01").split()[1] == "ok"  # the image still says what happened
    assert live_drill_instances(ec2) == []
