"""ec2_to_ami.py end to end: a subprocess with a config file, against the local endpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from bench import budget
from ec2ami.contract import joined_value
from localaws.endpoint import SETTINGS, finish_pending
from tests.conftest import (
    REGION,
    all_snapshots,
    available_by_server,
    backup_config,
    build_network,
    launch,
    linux_servers,
    managed,
    orphaned_managed_snapshots,
    run,
    script_command,
    tags_of,
    wait_for,
    write_config,
)


def test_four_runs_keep_two_backups_per_server_and_no_orphans(ec2, fleet, tmp_path):
    hand_made = ec2.create_image(InstanceId=fleet.instances["web01"], Name="web01-by-hand")
    config = backup_config(tmp_path, fleet, KEEP=2)
    for _ in range(4):
        result = run("ec2_to_ami.py", config)
        assert result.returncode == 0, result.stderr
    assert available_by_server(ec2) == {"web01": 2, "app01": 2, "win01": 2}
    assert ec2.describe_images(ImageIds=[hand_made["ImageId"]])["Images"]
    assert orphaned_managed_snapshots(ec2) == []
    for image in managed(ec2):
        snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        assert tags_of(snapshot)["ec2-to-ami:server"] == tags_of(image)["ec2-to-ami:server"]
    assert "3 server(s): 3 backed up, 0 failed" in result.stderr


def test_backup_records_the_launch_configuration(ec2, fleet, tmp_path):
    run("ec2_to_ami.py", backup_config(tmp_path, fleet, TAGS={"CostCenter": "ops"}))
    web = tags_of(managed(ec2, "web01")[0])
    instance = ec2.describe_instances(InstanceIds=[fleet.instances["web01"]])
    instance = instance["Reservations"][0]["Instances"][0]
    assert web["ec2-to-ami:managed-by"] == "ec2-to-ami"
    assert web["ec2-to-ami:server"] == "web01"
    assert web["ec2-to-ami:schedule"] == "daily"
    assert web["ec2-to-ami:instance-id"] == fleet.instances["web01"]
    assert web["ec2-to-ami:instance-type"] == "t3.small"
    assert web["ec2-to-ami:subnet-id"] == fleet.subnet_id
    assert web["ec2-to-ami:security-group-ids"].split(",") == fleet.group_ids
    assert web["ec2-to-ami:key-name"] == "ops-key"
    assert web["ec2-to-ami:iam-instance-profile"] == fleet.profile_arn
    assert web["ec2-to-ami:private-ip"] == instance["PrivateIpAddress"]
    assert web["ec2-to-ami:eip-allocation-id"] == fleet.eips["web01"]
    assert web["ec2-to-ami:platform"] == "linux"
    assert web["ec2-to-ami:http-tokens"] == "required"
    assert json.loads(web["ec2-to-ami:instance-tag-keys"]) == ["Name", "Env"]
    assert (web["Name"], web["Env"], web["CostCenter"]) == ("web01", "prod", "ops")
    assert tags_of(managed(ec2, "win01")[0])["ec2-to-ami:platform"] == "windows"


def test_tag_limits_drop_extra_instance_tags_by_name_and_never_cut_values(ec2, iam, tmp_path):
    fleet = build_network(ec2, iam)
    vpc = fleet.vpc_id
    fleet.group_ids = [
        ec2.create_security_group(GroupName=f"g{n}", Description="g", VpcId=vpc)["GroupId"]
        for n in range(10)
    ]
    many = [{"Key": f"tag{n:02d}", "Value": f"value-{n}"} for n in range(44)]
    launch(ec2, fleet, "big01", tags=many)  # 44 + Name = 45 tags
    config = write_config(
        tmp_path / "c.py",
        SERVERS=[{"name": "big01", "instance_id": fleet.instances["big01"]}],
        TAGS={"CostCenter": "ops"},
    )
    planned = run("ec2_to_ami.py", config, "--dry-run", "-v")
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    [image] = managed(ec2, "big01")
    tags = tags_of(image)
    shown = planned.stdout + planned.stderr
    per_run = {"ec2-to-ami:created", "ec2-to-ami:run"}
    assert all(f"{k}={v}" in shown for k, v in tags.items() if k not in per_run)
    assert len(image["Tags"]) in (49, 50)  # full: one more key would need two more tags
    assert joined_value(tags, "ec2-to-ami:security-group-ids").split(",") == fleet.group_ids
    copied = json.loads(joined_value(tags, "ec2-to-ami:instance-tag-keys"))
    assert copied[0] == "Name" and all(tags[k] for k in copied)
    dropped = [f"tag{n:02d}" for n in range(44) if f"tag{n:02d}" not in copied]
    assert dropped and not set(dropped) & set(tags)
    assert f"instance tags not copied: {', '.join(dropped)}" in result.stderr
    assert f"without instance tags {', '.join(dropped)}: 50-tag limit" in planned.stdout
    assert all(len(value) <= 256 for value in tags.values())


def test_dry_run_prints_the_plan_and_changes_nothing(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    before = sorted(i["ImageId"] for i in managed(ec2))
    old_web = managed(ec2, "web01")[0]["ImageId"]
    calls_before = endpoint.count()
    result = run("ec2_to_ami.py", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"of {fleet.instances['web01']} (web01, no reboot)" in result.stdout
    assert f"Would deregister {old_web} " in result.stdout
    assert "beyond KEEP=1" in result.stdout
    assert sorted(i["ImageId"] for i in managed(ec2)) == before
    mutating = {"CreateImage", "DeregisterImage", "DeleteSnapshot", "CreateTags"}
    new_calls = [c.action for c in endpoint.calls[calls_before:]]
    assert not mutating & set(new_calls)


def test_failing_server_exits_1_keeps_its_backups_and_others_are_done(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    first = {server: managed(ec2, server)[0]["ImageId"] for server in ("web01", "app01", "win01")}
    app = fleet.instances["app01"]
    endpoint.inject("CreateImage", "InternalError", 500, times=100, InstanceId=app)
    result = run("ec2_to_ami.py", config, AWS_MAX_ATTEMPTS="2")
    assert result.returncode == 1
    assert f"app01 ({app}): FAILED: backup failed: InternalError" in result.stderr
    assert [i["ImageId"] for i in managed(ec2, "app01")] == [first["app01"]]
    for server in ("web01", "win01"):
        [image] = managed(ec2, server)
        assert image["ImageId"] != first[server]  # a new backup, and the old one pruned


def test_image_that_ends_failed_fails_the_server_and_is_deregistered(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    good = managed(ec2, "app01")[0]["ImageId"]
    SETTINGS.fail_images_of.add(fleet.instances["app01"])
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert "ended in state failed" in result.stderr
    assert [i["ImageId"] for i in managed(ec2, "app01")] == [good]
    assert orphaned_managed_snapshots(ec2) == []


def test_wait_timeout_fails_the_server_and_leaves_the_pending_image(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1, WAIT_TIMEOUT_MINUTES=0.02)
    SETTINGS.pending_seconds = 600
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert "still pending after 0.02 minutes" in result.stderr
    assert {i["State"] for i in managed(ec2)} == {"pending"}
    finish_pending()
    SETTINGS.pending_seconds = 0.5
    assert run("ec2_to_ami.py", config).returncode == 0
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


def test_throttling_and_server_errors_are_retried(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    endpoint.inject("CreateImage", "RequestLimitExceeded", 503, times=2)
    endpoint.inject("DescribeImages", "InternalError", 500, times=1)
    endpoint.inject("DeregisterImage", "RequestLimitExceeded", 503, times=1)
    endpoint.inject("DescribeInstances", "Unavailable", 503, times=1)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert endpoint.count(ok=False) == 5
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


def test_image_deregistered_while_pending_fails_only_that_server(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, KEEP=1)
    SETTINGS.pending_seconds = 3600  # pending until finish_pending()
    proc = subprocess.Popen(
        script_command("ec2_to_ami.py", config), stderr=subprocess.PIPE, text=True
    )
    polled = {"Filter.2.Name": "tag:ec2-to-ami:run"}
    wait_for(lambda: endpoint.count("DescribeImages", ok=True, **polled) >= 1, "the first poll")
    victim = managed(ec2, "app01")[0]["ImageId"]
    ec2.deregister_image(ImageId=victim)
    finish_pending()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"image {victim} disappeared while pending" in stderr
    assert "3 server(s): 2 backed up, 1 failed" in stderr


def test_overlapping_run_of_the_same_config_exits_3_and_each_server_is_imaged_once(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet)
    SETTINGS.pending_seconds = 3600  # the first run waits until finish_pending()
    first = subprocess.Popen(script_command("ec2_to_ami.py", config), stderr=subprocess.PIPE)
    wait_for(lambda: endpoint.count("CreateImage") >= 3, "the first run's creates")
    second = run("ec2_to_ami.py", config, AWS_ACCESS_KEY_ID="second-run")
    assert second.returncode == 3
    assert "another run of" in second.stderr and "nothing done" in second.stderr
    assert not [c for c in endpoint.calls if c.key == "second-run"]  # it made no AWS call
    finish_pending()
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


def test_two_instances_with_one_name_fail_that_name_only(ec2, fleet, tmp_path):
    original = fleet.instances["win01"]
    twin = launch(ec2, fleet, "win01", tags=[{"Key": "Backup", "Value": "yes"}])
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet))
    assert result.returncode == 1
    lines = [x for x in result.stderr.splitlines() if "resolves to several instances" in x]
    assert len(lines) == 2  # one failure line per instance
    assert all("server name 'win01'" in x for x in lines)
    assert all(twin in x and original in x for x in lines)
    assert available_by_server(ec2) == {"web01": 1, "app01": 1}


def test_terminated_listed_instance_fails_and_its_backups_are_kept(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    ec2.terminate_instances(InstanceIds=[fleet.instances["app01"]])
    for _ in range(2):
        result = run("ec2_to_ami.py", config)
        assert result.returncode == 1
    assert "app01" in result.stderr and "instance is terminated" in result.stderr
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


def test_schedules_keep_separate_pools(ec2, fleet, tmp_path):
    daily = backup_config(tmp_path, fleet, name="daily.py", KEEP=1)
    weekly = backup_config(tmp_path, fleet, name="weekly.py", KEEP=1, SCHEDULE="weekly")
    for config in (daily, weekly, daily):
        assert run("ec2_to_ami.py", config).returncode == 0
    schedules = sorted(tags_of(i)["ec2-to-ami:schedule"] for i in managed(ec2, "web01"))
    assert schedules == ["daily", "weekly"]


def test_server_flag_backs_up_only_that_server(ec2, fleet, tmp_path):
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet), "--server", "win01")
    assert result.returncode == 0, result.stderr
    assert available_by_server(ec2) == {"win01": 1}


def test_no_prune_keeps_everything(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    for _ in range(2):
        assert run("ec2_to_ami.py", config, "--no-prune").returncode == 0
    assert available_by_server(ec2) == {"web01": 2, "app01": 2, "win01": 2}


def test_list_prints_managed_backups_per_server(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    run("ec2_to_ami.py", config)
    ec2.create_image(InstanceId=fleet.instances["web01"], Name="web01-by-hand")
    result = run("ec2_to_ami.py", config, "--list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    header = ["SERVER", "REGION", "POOL", "IMAGE", "NAME", "CREATED", "STATE", "SCHEDULE",
              "VERIFIED"]  # fmt: skip
    assert lines[0].split() == header
    assert [line.split()[:2] for line in lines[1:]] == [
        ["app01", REGION],
        ["web01", REGION],
        ["win01", REGION],
    ]
    assert all(line.split()[-3:] == ["available", "daily", "-"] for line in lines[1:])
    assert "web01-by-hand" not in result.stdout


def test_quiet_run_prints_nothing_when_all_is_well(ec2, fleet, tmp_path):
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet), "-q")
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_log_file_gets_the_run(ec2, fleet, tmp_path):
    log_file = tmp_path / "backup.log"
    run("ec2_to_ami.py", backup_config(tmp_path, fleet, LOG_FILE=str(log_file)))
    assert "3 server(s): 3 backed up, 0 failed" in log_file.read_text()


def test_killed_run_leaves_only_labelled_images_and_the_next_run_recovers(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.pending_seconds = 600
    proc = subprocess.Popen(script_command("ec2_to_ami.py", config), stderr=subprocess.DEVNULL)
    wait_for(lambda: endpoint.count("CreateImage", ok=True) >= 6, "the second run's creates")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: all(c.status for c in endpoint.calls), "the answer to the dying call")
    finish_pending()
    SETTINGS.pending_seconds = 0.5
    assert run("ec2_to_ami.py", config).returncode == 0
    images = ec2.describe_images(Owners=["self"])["Images"]
    assert all(tags_of(i)["ec2-to-ami:managed-by"] == "ec2-to-ami" for i in images)
    snapshots = all_snapshots(ec2)
    assert all(tags_of(s).get("ec2-to-ami:managed-by") for s in snapshots)
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}
    assert orphaned_managed_snapshots(ec2) == []


@pytest.mark.parametrize("servers", [10])
def test_steady_state_run_stays_within_the_call_budget(ec2, iam, tmp_path, endpoint, servers):
    fleet = build_network(ec2, iam)
    entries = []
    for n in range(servers):
        instance_id = launch(ec2, fleet, f"srv{n:02d}")
        entries.append({"name": f"srv{n:02d}", "instance_id": instance_id})
    config = write_config(tmp_path / "c.py", SERVERS=entries, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    before = endpoint.count(ok=True)
    assert run("ec2_to_ami.py", config).returncode == 0
    calls = endpoint.count(ok=True) - before
    assert endpoint.count("DeregisterImage", ok=True) == servers
    assert calls <= budget(servers)  # 3N + one DescribeImageReferences per 10 pruned + 14


def test_credentials_come_only_from_the_standard_chain(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS")}
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    result = subprocess.run(
        script_command("ec2_to_ami.py", config),
        capture_output=True,
        text=True,
        env={**env, "AWS_EC2_METADATA_DISABLED": "true"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "Unable to locate credentials" in result.stderr
    assert "Traceback" not in result.stderr


def test_throttled_run_of_dozens_backs_up_every_server_at_the_buckets_pace(
    ec2, iam, tmp_path, endpoint
):
    servers = linux_servers(ec2, iam, 60)
    config = write_config(tmp_path / "c.py", SERVERS=servers, KEEP=1)
    for _ in range(2):  # the second run also deregisters 60 images
        endpoint.throttle()
        started = time.monotonic()
        result = run("ec2_to_ami.py", config)
        assert result.returncode == 0, result.stderr
        assert "60 server(s): 60 backed up, 0 failed" in result.stderr
    assert time.monotonic() - started >= (60 - 50) / 5  # EC2's mutating bucket was the limit
    refused = sum(1 for c in endpoint.calls if c.status == 503)
    assert refused <= 2  # the client waited for tokens instead of being refused
    assert len(managed(ec2)) == 60


def test_paced_run_still_reports_every_failure(ec2, iam, tmp_path, endpoint):
    servers = linux_servers(ec2, iam, 60)
    config = write_config(tmp_path / "c.py", SERVERS=servers, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    broken_create, broken_prune = servers[55], servers[3]
    old_image = managed(ec2, broken_prune["name"])[0]["ImageId"]
    endpoint.inject("CreateImage", "UnauthorizedOperation", times=5,
                    InstanceId=broken_create["instance_id"])  # fmt: skip
    endpoint.inject("DeregisterImage", "UnauthorizedOperation", times=5, ImageId=old_image)
    endpoint.throttle()
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert "60 server(s): 58 backed up, 2 failed" in result.stderr
    assert f"{broken_create['name']} ({broken_create['instance_id']}): FAILED: backup failed" in (
        result.stderr
    )
    assert f"could not deregister {old_image}: UnauthorizedOperation" in result.stderr
    assert len(managed(ec2, broken_create["name"])) == 1  # its last good backup is kept


def test_failed_polls_are_retried_at_the_next_poll(ec2, fleet, tmp_path, endpoint):
    poll = {"Filter.2.Name": "tag:ec2-to-ami:run"}  # the poll, not the listing
    endpoint.inject("DescribeImages", "InternalError", 500, times=2, **poll)
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet), AWS_MAX_ATTEMPTS="1")
    assert result.returncode == 0, result.stderr
    # Two polls failed (how many images each covered depends on how far the creates got).
    failed = re.findall(r"could not poll [123] new image\(s\): InternalError", result.stderr)
    assert len(failed) == 2
    assert "3 server(s): 3 backed up, 0 failed" in result.stderr


def test_a_disabled_backup_counts_and_is_pruned_with_its_snapshots(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    [old] = managed(ec2, "web01")
    ec2.disable_image(ImageId=old["ImageId"])  # hidden from a plain DescribeImages
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    [new] = managed(ec2, "web01")
    assert new["ImageId"] != old["ImageId"] and new["State"] == "available"
    assert f"pruned {old['ImageId']}" in result.stderr
    assert orphaned_managed_snapshots(ec2) == []
    snapshot_ids = {s["SnapshotId"] for s in all_snapshots(ec2)}
    assert old["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] not in snapshot_ids
