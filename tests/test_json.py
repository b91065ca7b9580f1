"""--json on every command: stdout is one document, valid under its schema in docs/json, on
success and on failure (the schemas' own check is jsonschema's metaschema)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from localaws.endpoint import SETTINGS
from tests.conftest import ROOT, backup_config, documented, managed, run, write_config

SCHEMAS = sorted((ROOT / "docs" / "json").glob("*.schema.json"))


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_each_schema_is_a_valid_schema_and_documented(path):
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
    assert f"json/{path.name}" in (ROOT / "docs" / "json.md").read_text()


def test_the_backup_run_its_dry_run_listing_and_last_run(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    planned = documented(run("ec2_to_ami.py", config, "--dry-run", "--json"), "backup-run")
    assert planned["exit_code"] == 0 and len(planned["actions"]) == 3
    assert all(a.startswith("Would create image ") for a in planned["actions"])
    assert managed(ec2) == []  # the dry run made nothing
    done = run("ec2_to_ami.py", config, "--json")
    document = documented(done, "backup-run")
    assert done.returncode == document["exit_code"] == 0
    made = {s["server"]: s["image_id"] for s in document["servers"]}
    assert made == {tags["ec2-to-ami:server"]: i["ImageId"] for i in managed(ec2)
                    for tags in [{t["Key"]: t["Value"] for t in i["Tags"]}]}  # fmt: skip
    listed = documented(run("ec2_to_ami.py", config, "--list", "--json", "--recycle-bin"),
                        "backup-list")  # fmt: skip
    assert {b["image_id"] for b in listed["backups"]} == set(made.values())
    assert listed["recycle_bin"] == []
    last = documented(run("ec2_to_ami.py", config, "--last-run", "--json"), "backup-last-run")
    assert last["record"]["exit_code"] == 0 and last["record"]["errors"] == []


def test_a_failed_run_keeps_its_error_lines_for_last_run_and_check(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, RPO_HOURS=24)
    ec2.terminate_instances(InstanceIds=[fleet.instances["app01"]])
    failed = run("ec2_to_ami.py", config, "--json")
    document = documented(failed, "backup-run")
    assert failed.returncode == document["exit_code"] == 1  # its own document, not the error's
    [app] = [s for s in document["servers"] if s["server"] == "app01"]
    assert app["image_id"] is None and "app01" in document["errors"][0]
    shown = run("ec2_to_ami.py", config, "--last-run")
    assert shown.returncode == 1
    assert f"{app['error']}" in shown.stdout and "Whole log: LOG_FILE is None" in shown.stdout
    checked = documented(run("ec2_to_ami.py", config, "--check", "--json"), "backup-check")
    [problem] = [p for p in checked["problems"] if p.startswith("the last run")]
    assert "exited 1: app01" in problem  # why, without the log


def test_the_restore_listing_and_dry_run(ec2, fleet, tmp_path):
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    SETTINGS.instance_pending_seconds = 0.2
    config = write_config(tmp_path / "restore.py", SERVER="web01")
    listed = documented(run("ami_to_ec2.py", config, "--list", "--json"), "restore-list")
    assert [b["server"] for b in listed["backups"]] == ["web01"]
    assert listed["recycle_bin"] is None
    ec2.terminate_instances(InstanceIds=[fleet.instances["web01"]])
    planned = run("ami_to_ec2.py", config, "--dry-run", "--json")
    [server] = documented(planned, "restore-dry-run")["servers"]
    assert server["ec2_dry_run"] == "accepted" and server["run_instances"]["InstanceType"]


@pytest.mark.parametrize(
    ("script", "settings", "args", "code"),
    [
        ("ec2_to_ami.py", {"KEEP": 0}, ["--list"], 2),  # a config error
        ("ec2_to_ami.py", {}, ["--list", "--dry-run"], 2),  # a usage error
        ("ami_to_ec2.py", {"SERVER": "nosuch"}, [], 1),  # nothing to restore
    ],
)
def test_a_failure_prints_the_error_document(endpoint, tmp_path, script, settings, args, code):
    config = write_config(tmp_path / "c.py", **settings)
    result = run(script, config, *args, "--json")
    document = documented(result, "error")
    assert result.returncode == document["exit_code"] == code
    assert document["error"] and document["error"] in result.stderr


def test_ctrl_c_in_a_long_read_ends_in_one_line_and_the_error_document(
    ec2, fleet, tmp_path, monkeypatch
):
    """--cost can read for minutes: Ctrl-C there is exit 1 and a line, never a traceback."""
    from ec2ami.backup import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cost_report", interrupted)
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet), "--cost", "--json")
    document = documented(result, "error")
    assert result.returncode == document["exit_code"] == 1
    assert document["error"] == "interrupted: nothing more was done"
    assert "Traceback" not in result.stderr
