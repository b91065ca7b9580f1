"""Exit codes that mean what they say: 0 only when every selected server has its backup, 1
for whatever AWS (or a proxy in front of it) answers, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from localaws.endpoint import HTML_PAGE, finish_pending
from localaws.fleet import launch
from tests.conftest import REGION, backup_config, managed, run, write_config


def state_of(state_home: Path) -> dict:
    [path] = (state_home / "ec2-to-ami").glob("*.json")
    return json.loads(path.read_text())


def test_a_run_that_selects_no_server_fails(ec2, fleet, tmp_path, state_home):
    config = write_config(tmp_path / "tagged.py", SELECT_TAGS={"Backup": "nobody-has-this"})
    for args in ([], ["-q"], ["--dry-run"]):
        result = run("ec2_to_ami.py", config, *args)
        assert result.returncode == 1, args
        assert "the config selects no server" in result.stderr
    assert state_of(state_home)["exit_code"] == 1
    assert managed(ec2) == []


def test_an_html_page_from_a_proxy_is_an_aws_error_recorded_with_its_metrics(
    ec2, fleet, tmp_path, endpoint, state_home
):
    """botocore cannot parse it (ResponseParserError, neither ClientError nor BotoCoreError):
    exit 1 and a message, the run recorded, ServersFailed and RunSeconds put."""
    config = backup_config(tmp_path, fleet, METRICS_NAMESPACE="EC2Backup")
    endpoint.inject("GetLaunchTemplateData", HTML_PAGE, status=200, times=100)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "ResponseParserError" in result.stderr
    assert state_of(state_home)["exit_code"] == 1
    cw = boto3.client("cloudwatch", region_name=REGION, endpoint_url=endpoint.url)
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="EC2Backup")["Metrics"]}
    assert {"ServersFailed", "RunSeconds"} <= names


def test_an_html_page_during_the_sweep_leaves_the_backups_done(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet)
    endpoint.inject("DescribeSnapshots", HTML_PAGE, status=502, times=100)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert "sweep: could not look for orphans" in result.stderr
    assert "Traceback" not in result.stderr and len(managed(ec2)) == 3


def test_a_state_file_that_is_not_a_run_record_is_a_check_problem_naming_it(
    ec2, fleet, tmp_path, state_home
):
    config = backup_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    [path] = (state_home / "ec2-to-ami").glob("*.json")
    for corrupt in ("{not json", "[]", '{"finished": 7, "exit_code": 0}', "\udcff"):
        path.write_text(corrupt, errors="surrogateescape")
        result = run("ec2_to_ami.py", config, "--check")
        assert result.returncode == 1 and "Traceback" not in result.stderr, corrupt
        assert str(path) in result.stdout or "the last run" in result.stdout, corrupt


def test_a_name_tag_with_a_control_character_fails_only_that_server(ec2, fleet, tmp_path):
    launch(ec2, fleet, "bad", tags=[{"Key": "Backup", "Value": "yes"}])
    [instance] = [
        i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
        if {"Key": "Name", "Value": "bad"} in i.get("Tags", [])
    ]  # fmt: skip
    ec2.create_tags(
        Resources=[instance["InstanceId"]],
        Tags=[{"Key": "Name", "Value": "bad\n2026-12-07 INFO web01: backed up"}],
    )
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet))
    assert result.returncode == 1
    assert "contains a control character" in result.stderr
    assert "\nINFO web01: backed up" not in result.stderr  # no forged log line
    assert {t["Value"] for i in managed(ec2) for t in i["Tags"]
            if t["Key"] == "ec2-to-ami:server"} == {"web01", "app01", "win01"}  # fmt: skip


def test_without_wait_retention_still_keeps_keep(ec2, fleet, tmp_path):
    """WAIT = False never sees its own image verified, so it prunes the others down to KEEP
    at once, and the dry run says exactly that."""
    config = backup_config(tmp_path, fleet, KEEP=1, WAIT=False)
    for _ in range(4):
        assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
        finish_pending()
    dry = run("ec2_to_ami.py", config, "--server", "web01", "--dry-run").stdout
    assert dry.count("Would deregister") == 1
    assert len(managed(ec2, "web01")) == 2  # KEEP, and the last run's own image


def test_a_renamed_server_s_backups_do_not_become_invisible(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    ec2.create_tags(Resources=[fleet.instances["win01"]], Tags=[{"Key": "Name", "Value": "w2"}])
    result = run("ec2_to_ami.py", config, "--check")
    assert "1 backup(s) of win01" in result.stdout and "selects no server of that name" in (
        result.stdout
    )


@pytest.mark.parametrize(
    ("action", "launched"), [("DescribeImages", False), ("DescribeInstanceStatus", True)]
)
def test_an_html_page_during_a_restore_is_exit_1_saying_what_was_launched(
    ec2, fleet, tmp_path, endpoint, action, launched
):
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    finish_pending()
    endpoint.inject(action, HTML_PAGE, status=502, times=100)
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="web01"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "ResponseParserError" in result.stderr
    new = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
        {"Name": "tag-key", "Values": ["ec2-to-ami:restored-from"]}])["Reservations"]
        for i in r["Instances"]]  # fmt: skip
    if launched:
        assert len(new) == 1 and new[0] in result.stdout + result.stderr
    else:
        assert new == [] and "nothing launched" in result.stderr


# --- Broken environments: a clear message, fast (issue 28 §5) -----------------------------

SERVERS = [{"name": "web01", "instance_id": "i-0123456789abcdef0"}]


def test_an_unreachable_endpoint_fails_within_seconds_with_a_hint(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    config = write_config(tmp_path / "b.py", REGION="us-east-1", SERVERS=SERVERS)
    started = time.monotonic()
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1 and time.monotonic() - started < 15
    assert "retrying (2/3)" in result.stderr and "retrying (3/3)" in result.stderr
    assert "check the network, a proxy" in result.stderr and "Traceback" not in result.stderr


def test_a_typo_in_the_region_is_a_config_error_naming_the_nearest(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    config = write_config(tmp_path / "b.py", REGION="us-eats-1", SERVERS=SERVERS)
    result = run("ec2_to_ami.py", config, "--dry-run")
    assert result.returncode == 2 and "did you mean us-east-1?" in result.stderr


def test_a_lower_case_setting_is_a_config_error_not_ignored(tmp_path):
    config = tmp_path / "b.py"
    config.write_text(f"SERVERS = {SERVERS!r}\nkeep = 3\n")
    result = run("ec2_to_ami.py", config, "--dry-run")
    assert result.returncode == 2 and "settings are UPPER_CASE: did you mean KEEP?" in result.stderr


def test_region_and_profile_flags_win_over_the_config_and_errors_say_where_a_name_came_from(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    config = write_config(tmp_path / "b.py", REGION="us-east-1", SERVERS=SERVERS)
    result = run("ec2_to_ami.py", config, "--region", "us-eats-1", "--dry-run")
    assert result.returncode == 2 and "did you mean us-east-1?" in result.stderr  # the flag's
    result = run("ec2_to_ami.py", config, "--profile", "nosuch", "--dry-run")
    assert result.returncode == 2 and "PROFILE (or --profile)" in result.stderr
    monkeypatch.setenv("AWS_PROFILE", "nosuch")
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="web01"), "--list")
    assert result.returncode == 2 and "AWS_PROFILE: The config profile (nosuch)" in result.stderr
