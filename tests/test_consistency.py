"""CONSISTENCY: crash, reboot, VSS and pre/post scripts through SSM, against the SSM harness."""

from __future__ import annotations

import json
import re
import time

import pytest

from ec2ami.backup import config as backup_config_module
from localaws.endpoint import SETTINGS
from tests.conftest import backup_config, managed, run, tags_of


def scripted(tmp_path, fleet, **overrides):
    """web01 and app01 with pre/post scripts; win01 (SELECT_TAGS) crash-consistent."""
    servers = [
        {"name": "web01", "instance_id": fleet.instances["web01"], "consistency": "scripts"},
        {"name": "app01", "instance_id": fleet.instances["app01"], "consistency": "scripts"},
    ]
    settings = {"SERVERS": servers, "PRE_SCRIPT": "freeze-db", "POST_SCRIPT": "thaw-db"}
    return backup_config(tmp_path, fleet, **{**settings, **overrides})


def timeline(endpoint, instance_id: str) -> list[str]:
    """What happened to one instance, in order: pre, image, post."""
    events = []
    for call in endpoint.calls:
        if call.action == "SendCommand" and instance_id in call.params.get("InstanceIds", ""):
            text = call.params.get("Parameters", "") + call.params.get("DocumentName", "")
            events.append("pre" if "freeze-db" in text else "post" if "thaw-db" in text else text)
        if call.action == "CreateImage" and call.params.get("InstanceId") == instance_id:
            events.append(f"image:{call.status}")
    return events


def test_scripts_run_pre_then_image_then_post(ec2, fleet, tmp_path, endpoint):
    result = run("ec2_to_ami.py", scripted(tmp_path, fleet))
    assert result.returncode == 0, result.stderr
    assert timeline(endpoint, fleet.instances["web01"]) == ["pre", "image:200", "post"]
    creates = [c for c in endpoint.calls if c.action == "CreateImage"]
    assert all(c.params["NoReboot"] == "true" for c in creates)
    documents = {c.params["DocumentName"] for c in endpoint.calls if c.action == "SendCommand"}
    assert documents == {"AWS-RunShellScript"}


def test_post_script_runs_after_a_failed_create_image(ec2, fleet, tmp_path, endpoint):
    app = fleet.instances["app01"]
    endpoint.inject("CreateImage", "UnauthorizedOperation", times=3, InstanceId=app)
    result = run("ec2_to_ami.py", scripted(tmp_path, fleet))
    assert result.returncode == 1
    assert timeline(endpoint, app) == ["pre", "image:400", "post"]
    assert f"app01 ({app}): FAILED: backup failed: UnauthorizedOperation" in result.stderr


@pytest.mark.parametrize("status", ["Failed", "TimedOut"])
def test_failed_pre_script_fails_the_server_keeps_its_backups_and_still_thaws(
    ec2, fleet, tmp_path, endpoint, status
):
    config = scripted(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    kept = managed(ec2, "app01")[0]["ImageId"]
    SETTINGS.ssm_results = {"freeze-db": status}
    calls = len(endpoint.calls)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    line = next(x for x in result.stderr.splitlines() if "app01" in x and "FAILED" in x)
    assert re.search(rf"pre-script command [0-9a-f-]{{36}} {status}$", line)
    assert [i["ImageId"] for i in managed(ec2, "app01")] == [kept]
    endpoint.calls[:] = endpoint.calls[calls:]
    assert timeline(endpoint, fleet.instances["app01"]) == ["pre", "post"]


def test_on_script_failure_crash_falls_back_to_a_crash_consistent_image(ec2, fleet, tmp_path):
    SETTINGS.ssm_results = {"freeze-db": "Failed"}
    result = run("ec2_to_ami.py", scripted(tmp_path, fleet, ON_SCRIPT_FAILURE="crash"))
    assert result.returncode == 0, result.stderr
    assert "Failed; made a crash-consistent image instead" in result.stderr
    assert len(managed(ec2, "app01")) == 1


def test_failed_post_script_is_reported_with_its_command_id(ec2, fleet, tmp_path):
    SETTINGS.ssm_results = {"thaw-db": "Failed"}
    result = run("ec2_to_ami.py", scripted(tmp_path, fleet))
    assert result.returncode == 1
    assert "post-script command " in result.stderr and " Failed" in result.stderr
    assert len(managed(ec2, "web01")) == 1  # the image itself stands


def test_offline_instance_fails_with_what_it_needs_and_the_others_are_done(
    ec2, fleet, tmp_path, endpoint
):
    SETTINGS.ssm_offline = {fleet.instances["app01"]}
    result = run("ec2_to_ami.py", scripted(tmp_path, fleet))
    assert result.returncode == 1
    assert "SSM cannot reach" in result.stderr and "AmazonSSMManagedInstanceCore" in result.stderr
    assert timeline(endpoint, fleet.instances["app01"]) == []
    assert "3 server(s): 2 backed up, 1 failed" in result.stderr


def test_post_scripts_are_checked_together(ec2, fleet, tmp_path, endpoint):
    config = scripted(tmp_path, fleet, PRE_SCRIPT=None)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert endpoint.count("GetCommandInvocation") == 0
    assert endpoint.count("ListCommands") == 1  # both post-scripts in one call
    assert endpoint.count("DescribeInstanceInformation") == 1


def vss_config(tmp_path, fleet, **overrides):
    servers = [{"name": "win01", "instance_id": fleet.instances["win01"], "consistency": "vss",
                "platform": "windows"}]  # fmt: skip
    return backup_config(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={}, **overrides)


def test_vss_image_carries_the_tool_tags_and_is_pruned_like_any_other(
    ec2, fleet, tmp_path, endpoint
):
    config = vss_config(tmp_path, fleet, KEEP=2)
    for _ in range(4):
        result = run("ec2_to_ami.py", config)
        assert result.returncode == 0, result.stderr
    images = managed(ec2, "win01")
    assert len(images) == 2
    tags = tags_of(images[0])
    assert tags["AppConsistent"] == "true" and "AwsVssConfig" in tags
    assert tags["ec2-to-ami:subnet-id"] == fleet.subnet_id
    assert tags["ec2-to-ami:platform"] == "windows" and tags["Backup"] == "yes"
    snapshot_id = images[0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert tags_of(snapshot)["ec2-to-ami:server"] == "win01"
    sent = [c for c in endpoint.calls if c.action == "SendCommand"]
    parameters = json.loads(sent[0].params["Parameters"])
    assert parameters["CreateAmi"] == ["True"] and parameters["AmiName"][0].startswith("win01-")
    assert "AppConsistent" not in parameters["tags"][0]  # reserved: the document adds it
    assert endpoint.count("CreateImage") == 0


def test_a_vss_image_whose_snapshots_came_unmarked_fails_the_server_and_prunes_nothing(
    ec2, fleet, tmp_path
):
    config = vss_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.vss_snapshot_tags = False
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert "came without the ec2-to-ami:managed-by tag" in result.stderr and "win01" in (
        result.stderr
    )
    assert len(managed(ec2, "win01")) == 2  # KEEP=1, but nothing pruned after a failure


def test_failed_vss_command_fails_the_server_naming_the_command(ec2, fleet, tmp_path):
    SETTINGS.ssm_results = {"AWSEC2-CreateVssSnapshot": "Failed"}
    result = run("ec2_to_ami.py", vss_config(tmp_path, fleet))
    assert result.returncode == 1
    assert "win01" in result.stderr and "VSS command " in result.stderr
    assert managed(ec2, "win01") == []


def test_vss_on_a_known_linux_server_is_a_config_error(endpoint, fleet, tmp_path):
    servers = [{"name": "web01", "instance_id": fleet.instances["web01"], "consistency": "vss",
                "platform": "linux"}]  # fmt: skip
    calls = endpoint.count()
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet, SERVERS=servers))
    assert result.returncode == 2
    assert "consistency 'vss' is for Windows" in result.stderr
    assert endpoint.count() == calls


def test_vss_on_a_linux_instance_found_at_run_time_fails_that_server(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, CONSISTENCY="vss")
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert "consistency 'vss' needs a Windows instance" in result.stderr
    assert "3 server(s): 1 backed up, 2 failed" in result.stderr  # win01 works


def test_reboot_and_crash_modes_set_no_reboot_per_server(ec2, fleet, tmp_path, endpoint):
    servers = [
        {"name": "web01", "instance_id": fleet.instances["web01"], "consistency": "reboot"},
        {"name": "app01", "instance_id": fleet.instances["app01"], "no_reboot": True},
    ]
    config = backup_config(tmp_path, fleet, SERVERS=servers, CONSISTENCY="reboot")
    assert run("ec2_to_ami.py", config).returncode == 0
    no_reboot = {c.params["InstanceId"]: c.params["NoReboot"] for c in endpoint.calls
                 if c.action == "CreateImage"}  # fmt: skip
    assert no_reboot == {
        fleet.instances["web01"]: "false",
        fleet.instances["app01"]: "true",  # no_reboot is shorthand, and wins over CONSISTENCY
        fleet.instances["win01"]: "false",  # found by SELECT_TAGS: the global CONSISTENCY
    }


def test_ssm_refusing_the_check_fails_only_the_ssm_servers(ec2, fleet, tmp_path, endpoint):
    endpoint.inject("DescribeInstanceInformation", "AccessDeniedException", times=5)
    result = run("ec2_to_ami.py", scripted(tmp_path, fleet))
    assert result.returncode == 1
    assert "could not ask SSM about the instance: AccessDeniedException" in result.stderr
    assert "3 server(s): 1 backed up, 2 failed" in result.stderr


def test_hanging_pre_script_times_out_and_fails_the_server(ec2, fleet, tmp_path, monkeypatch):
    """A command still InProgress at SCRIPT_TIMEOUT_SECONDS (plus a poll's grace) has timed out."""
    monkeypatch.setattr(
        backup_config_module, "SCRIPT_TIMEOUT_MIN", 1
    )  # SSM's least is 30 s: too slow here
    SETTINGS.ssm_results = {"freeze-db": "Hang"}
    servers = [{"name": "app01", "instance_id": fleet.instances["app01"], "consistency": "scripts"}]
    config = scripted(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={}, SCRIPT_TIMEOUT_SECONDS=1)
    started = time.monotonic()
    result = run("ec2_to_ami.py", config)
    assert time.monotonic() - started >= 1  # it waited for the script's whole timeout
    assert result.returncode == 1
    assert re.search(
        r"app01 \(i-[0-9a-f]+\): FAILED: pre-script command \S+ TimedOut", result.stderr
    )
    assert managed(ec2, "app01") == []
