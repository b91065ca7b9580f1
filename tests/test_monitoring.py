"""--check (freshness, coverage, the last run) and the CloudWatch metrics, against the endpoint."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode

from ec2ami.backup import state
from ec2ami.backup.cli import parse_args, run_lock
from ec2ami.backup.config import validate_config
from ec2ami.backup.state import age_metrics
from ec2ami.errors import EXIT_LOCKED
from localaws.endpoint import age_image
from localaws.fleet import launch
from tests.conftest import REGION, ROOT, backup_config, documented, managed, run, write_config

NAMESPACE = "EC2Backup"
LIVE = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}


def set_created(ec2: Any, image_id: str, hours_ago: float) -> None:
    """Make a backup taken hours ago, as time would: its CreationDate and its created tag."""
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    made = datetime.fromisoformat(image["CreationDate"].replace("Z", "+00:00"))
    age_image(
        image_id, (made - (datetime.now(timezone.utc) - timedelta(hours=hours_ago))).total_seconds()
    )


def state_file(state_home: Path) -> Path:
    [path] = (state_home / "ec2-to-ami").glob("*.json")
    return path


def check(config: Path, *args: str) -> tuple[int, str, dict]:
    """Run --check twice, as text and as JSON; return the code, the text and the document."""
    text = run("ec2_to_ami.py", config, "--check", *args)
    document = run("ec2_to_ami.py", config, "--check", "--json", *args)
    assert text.returncode == document.returncode, (text.stderr, document.stderr)
    return text.returncode, text.stdout, documented(document, "backup-check")


def test_check_names_the_stale_the_missing_and_the_uncovered(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    result = run("ec2_to_ami.py", config, "--server", "web01", "--server", "win01")
    assert result.returncode == 0, result.stderr
    [web] = managed(ec2, "web01")
    set_created(ec2, web["ImageId"], hours_ago=30)  # daily: RPO 26 h
    stray = launch(ec2, fleet, "scratch01")
    launch(ec2, fleet, "batch01", tags=[{"Key": "ec2-to-ami:skip", "Value": "yes"}])
    code, text, document = check(config)
    assert code == 1
    summary = text.splitlines()[0]
    assert summary.startswith("PROBLEM: ")
    assert "web01: newest backup" in summary and "30.0 h old (RPO 26 h)" in summary
    assert "app01: no available backup" in summary
    assert f"{stray} (scratch01): no config backs it up" in summary
    assert "win01" not in summary and "batch01" not in summary
    status = {b["server"]: b["status"] for b in document["backups"]}
    assert status == {"web01": "stale", "app01": "missing", "win01": "fresh"}
    assert [u["instance_id"] for u in document["uncovered"]] == [stray]
    assert [o["name"] for o in document["opted_out"]] == ["batch01"]
    assert len(document["problems"]) == 3 and document["last_run"]["problem"] is None


def test_all_fresh_exits_0_and_quiet_prints_nothing(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    other_id = launch(ec2, fleet, "other01")
    other = write_config(tmp_path / "other.py",
                         SERVERS=[{"name": "other01", "instance_id": other_id}])  # fmt: skip
    code, text, _ = check(config)
    assert code == 1 and f"{other_id} (other01): no config backs it up" in text
    code, text, document = check(config, "--also-config", str(other))
    assert code == 0, text
    assert text.startswith("OK: 3 backup(s) within RPO 26 h")
    assert document["ok"] and document["last_run"]["record"]["servers_backed_up"] == 3
    quiet = run("ec2_to_ami.py", config, "--check", "-q", "--also-config", str(other))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_check_only_describes_and_runs_while_a_backup_holds_the_lock(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, COPY_TO_REGIONS={"us-west-2": {"keep": 1}})
    assert run("ec2_to_ami.py", config).returncode == 0
    start = len(endpoint.calls)
    with run_lock(str(config)) as locked:
        assert locked
        assert run("ec2_to_ami.py", config).returncode == EXIT_LOCKED
        code, text, document = check(config)
    assert code == 0, text
    assert {b["region"] for b in document["backups"]} == {REGION, "us-west-2"}
    actions = {c.action for c in endpoint.calls[start:]}
    assert actions and all(a.startswith(("Describe", "Get")) for a in actions), actions


def test_a_failed_overdue_or_missing_last_run_is_a_problem(ec2, fleet, tmp_path, state_home):
    config = backup_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    path = state_file(state_home)
    record = json.loads(path.read_text())
    assert (record["exit_code"], record["servers_failed"], record["pool"]) == (0, 0, "backup")
    path.write_text(json.dumps({**record, "exit_code": 1}))
    code, text, _ = check(config)
    assert code == 1 and "the last run, 0.0 h ago, exited 1" in text.splitlines()[0]
    three_days_ago = datetime.now(timezone.utc) - timedelta(days=3)
    path.write_text(json.dumps({**record, "finished": three_days_ago.isoformat()}))
    code, text, _ = check(config)
    assert code == 1 and "the last run was 72.0 h ago (2 x RPO: 52 h)" in text
    path.unlink()
    code, text, _ = check(config)
    assert code == 1 and f"no run recorded in {path}" in text


def test_a_run_that_fails_on_aws_is_recorded_as_failed(fleet, tmp_path, endpoint, state_home):
    config = backup_config(tmp_path, fleet)
    endpoint.inject("DescribeInstances", "UnauthorizedOperation", status=403, times=1)
    assert run("ec2_to_ami.py", config).returncode == 1
    assert json.loads(state_file(state_home).read_text())["exit_code"] == 1
    assert run("ec2_to_ami.py", config, "--dry-run").returncode == 0
    assert json.loads(state_file(state_home).read_text())["exit_code"] == 1  # not a run


def cloudwatch(endpoint) -> Any:
    return boto3.client("cloudwatch", region_name=REGION, endpoint_url=endpoint.url)


def latest(cw: Any, name: str, **dimensions: str) -> float:
    """The largest value of a metric over the last hour."""
    now = datetime.now(timezone.utc)
    points = cw.get_metric_statistics(
        Namespace=NAMESPACE, MetricName=name, Statistics=["Maximum"], Period=60,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5),
    )["Datapoints"]  # fmt: skip
    assert points, f"no {name} {dimensions}"
    return max(p["Maximum"] for p in points)


def test_metrics_arrive_with_their_dimensions_and_values(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, METRICS_NAMESPACE=NAMESPACE)
    ec2.stop_instances(InstanceIds=[fleet.instances["app01"]])
    ec2.terminate_instances(InstanceIds=[fleet.instances["app01"]])
    assert run("ec2_to_ami.py", config).returncode == 1  # app01 is gone
    cw = cloudwatch(endpoint)
    run_dims = {"Schedule": "daily", "Pool": "backup"}
    assert latest(cw, "ServersBackedUp", **run_dims) == 2
    assert latest(cw, "ServersFailed", **run_dims) == 1
    assert latest(cw, "ImagesPruned", **run_dims) == 0
    assert 0 < latest(cw, "RunSeconds", **run_dims) < 60
    for server in ("web01", "win01"):
        assert 0 <= latest(cw, "BackupAgeHours", Server=server, **run_dims) < 0.1
    names = {
        d["Value"]
        for m in cw.list_metrics(Namespace=NAMESPACE, MetricName="BackupAgeHours")["Metrics"]
        for d in m["Dimensions"]
        if d["Name"] == "Server"
    }
    assert names == {"web01", "win01"}  # app01 has no backup: no datum, so the alarm breaches
    [web] = managed(ec2, "web01")
    set_created(ec2, web["ImageId"], hours_ago=5)
    assert run("ec2_to_ami.py", config, "--check").returncode == 1
    assert latest(cw, "BackupAgeHours", Server="web01", **run_dims) == pytest.approx(5, abs=0.1)


def test_metrics_take_one_call_per_thousand(ec2, fleet, tmp_path, endpoint, monkeypatch):
    config = backup_config(tmp_path, fleet, METRICS_NAMESPACE=NAMESPACE)
    assert run("ec2_to_ami.py", config).returncode == 0
    assert endpoint.count("PutMetricData") == math.ceil(3 / 1000) == 1
    monkeypatch.setattr(state, "METRICS_PER_CALL", 2)
    assert run("ec2_to_ami.py", config).returncode == 0
    assert endpoint.count("PutMetricData") == 1 + math.ceil((3 + 4) / 2)
    metrics = cloudwatch(endpoint).list_metrics(Namespace=NAMESPACE)["Metrics"]
    distinct = {(m["MetricName"], *(d["Value"] for d in m["Dimensions"])) for m in metrics}
    assert len(distinct) == 3 + 4  # moto lists a metric once per put; CloudWatch once


def test_a_metrics_failure_warns_and_leaves_the_exit_code(fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, METRICS_NAMESPACE=NAMESPACE)
    endpoint.inject("PutMetricData", "InternalFailure", status=500, times=20)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert f"could not put metrics in {NAMESPACE}" in result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"SCHEDULE": "monthly"}, "SCHEDULE 'monthly' has no default RPO"),
        ({"METRICS_NAMESPACE": "AWS/EC2"}, "METRICS_NAMESPACE must be None or"),
        ({"RPO_HOURS": 0}, "RPO_HOURS must be None or a number above 0"),
    ],
)
def test_check_config_errors_exit_2_before_any_call(tmp_path, endpoint, settings, message):
    config = write_config(tmp_path / "c.py", SERVERS=[{"name": "a", "instance_id": "i-0abc1234"}],
                          **settings)  # fmt: skip
    result = run("ec2_to_ami.py", config, "--check")
    assert result.returncode == 2 and message in result.stderr
    assert endpoint.calls == []


def test_also_config_errors_name_the_file(tmp_path, endpoint):
    config = write_config(tmp_path / "c.py", SERVERS=[{"name": "a", "instance_id": "i-0abc1234"}])
    other = write_config(tmp_path / "other.py", KEEP=0)
    result = run("ec2_to_ami.py", config, "--check", "--also-config", str(other))
    assert result.returncode == 2 and f"--also-config {other}: KEEP must be" in result.stderr
    assert endpoint.calls == []


def test_the_alarm_template_passes_cfn_lint_and_reads_what_the_tool_puts():
    path = ROOT / "docs" / "monitoring" / "backup-alarms.yaml"
    assert [str(m) for m in lint_file(path)] == []
    template, problems = decode(str(path))
    assert problems == []
    config = validate_config(
        {"SERVERS": [{"name": "web01", "instance_id": "i-0abc1234"}], "POOL": "daily"}
    )
    [put] = age_metrics(config, {"web01": 1.0}, datetime.now(timezone.utc))
    age = template["Resources"]["BackupAgeAlarm"]["Properties"]
    assert (age["Namespace"], age["MetricName"]) == (NAMESPACE, put["MetricName"])
    assert [d["Name"] for d in age["Dimensions"]] == [d["Name"] for d in put["Dimensions"]]
    assert (age["ComparisonOperator"], age["Threshold"]) == ("GreaterThanThreshold",
                                                             {"Ref": "RpoHours"})  # fmt: skip
    assert age["TreatMissingData"] == "breaching"  # a cron that stopped alarms too
    failed = template["Resources"]["FailedRunAlarm"]["Properties"]
    assert failed["MetricName"] == "ServersFailed"


def shipped_command_lines() -> list[list[str]]:
    """Each ec2_to_ami.py command line in crontab.example and the systemd units."""
    lines = [
        line
        for path in [ROOT / "crontab.example", *sorted((ROOT / "docs" / "systemd").iterdir())]
        for line in path.read_text().splitlines()
        if "ec2_to_ami.py --config" in line and not line.startswith("#")
    ]
    return [shlex.split(line.split("ec2_to_ami.py", 1)[1].split(">>")[0]) for line in lines]


def test_the_shipped_cron_and_systemd_lines_parse_and_include_a_check():
    commands = shipped_command_lines()
    assert len(commands) == 6  # cron and systemd each: daily, weekly, the check
    for argv in commands:
        args = parse_args(argv)
        assert args.config.startswith("/etc/ec2-backup/")
    assert sum(parse_args(a).check for a in commands) == 2
    for argv in (a for a in commands if parse_args(a).check):  # the weekly's servers count
        assert parse_args(argv).also_config == ["/etc/ec2-backup/weekly.py"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_systemd_units_verify(tmp_path):
    units = []
    for unit in (ROOT / "docs" / "systemd").iterdir():
        text = unit.read_text().replace("/opt/ec2-backup/.venv/bin/python", sys.executable)
        (tmp_path / unit.name).write_text(text.replace("/opt/ec2-backup/", f"{ROOT}/"))
        units.append(str(tmp_path / unit.name))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize(
    "unit", sorted(u.name for u in (ROOT / "docs" / "systemd").glob("*.service"))
)
def test_each_shipped_service_is_hardened(unit):
    """systemd's own exposure score: at most 5 ("OK"), as each unit's comment promises."""
    result = subprocess.run(
        # --threshold is on the 0-100 scale behind the printed 0-10 score: 50 is 5.0.
        ["systemd-analyze", "security", "--offline=true", "--threshold=50", "--no-pager", unit],
        cwd=ROOT / "docs" / "systemd", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-400:] + result.stderr
    score = float(result.stdout.split("Overall exposure level for ")[1].split()[1])
    assert score <= 5
    promised = (ROOT / "docs" / "systemd" / unit).read_text()
    assert f" {score:.1f}" in promised.replace("\n# ", " "), f"the comment does not say {score}"


def test_every_backup_and_drill_unit_can_write_its_logs():
    """ProtectSystem=strict makes / read-only: LOG_FILE and DRILL_LOG need LogsDirectory."""
    for unit in (ROOT / "docs" / "systemd").glob("ec2-*.service"):
        text = unit.read_text()
        if "ProtectSystem=strict" in text and "--check" not in text:
            assert "LogsDirectory=ec2-backup" in text, unit.name
        if "ProtectSystem=strict" in text:
            assert "ReadWritePaths=-/run/lock" in text, unit.name  # the run lock (LOCK_DIRS)


def test_a_config_that_selects_nothing_is_a_problem(fleet, tmp_path):
    config = write_config(tmp_path / "tagged.py", SELECT_TAGS={"Backup": "renamed"})
    code, text, document = check(config)
    assert code == 1
    assert "the config selects no server (SELECT_TAGS {'Backup': 'renamed'}" in text
    assert len(document["uncovered"]) == 3  # so the whole fleet is not backed up


def test_the_nagios_plugin_says_ok_critical_or_unknown(ec2, fleet, tmp_path):
    plugin = str(ROOT / "docs" / "monitoring" / "check_ec2_backup")
    env = {**os.environ, "EC2_TO_AMI": str(ROOT / "ec2_to_ami.py"),
           "EC2_TO_AMI_PYTHON": sys.executable}  # fmt: skip

    def plugin_run(config: Path) -> subprocess.CompletedProcess:
        return subprocess.run([plugin, str(config)], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    config = backup_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    ok = plugin_run(config)
    assert (ok.returncode, ok.stdout) == (0, f"OK: the backups of {config} are within RPO\n")
    [web] = managed(ec2, "web01")
    set_created(ec2, web["ImageId"], hours_ago=30)
    critical = plugin_run(config)
    assert critical.returncode == 2 and critical.stdout.startswith("PROBLEM: web01: newest backup")
    unknown = plugin_run(write_config(tmp_path / "bad.py", KEEP=0))
    assert unknown.returncode == 3 and unknown.stdout.startswith("UNKNOWN: ")
    assert "KEEP must be a whole number" in unknown.stdout and "Traceback" not in unknown.stderr
