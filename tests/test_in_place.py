"""Restore in place (issue 30): a broken server gets its disks back from a backup and
keeps its instance, interfaces, addresses, Elastic IP and tags; the old disks are kept and
tagged, --rollback puts them back, and a run stopped anywhere is finished by the next."""

from __future__ import annotations

import signal
import subprocess

import boto3
import pytest

from ec2ami.contract import (
    TAG_IN_PLACE,
    TAG_IN_PLACE_VOLUME,
    TAG_REPLACED_BY_RESTORE,
    TAG_RESTORED_IN_PLACE,
)
from localaws.endpoint import SETTINGS
from localaws.volumes import VOLUMES
from tests.conftest import (
    REGION,
    backup_config,
    documented,
    managed,
    run,
    script_command,
    tags_of,
    wait_for,
    write_config,
)

DATA = {"/dev/sdf": 20, "/dev/sdg": 30}


def instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def disks(ec2, instance_id: str) -> dict[str, dict]:
    """Each device's volume, read back from the endpoint."""
    ids = [m["Ebs"]["VolumeId"] for m in instance(ec2, instance_id)["BlockDeviceMappings"]]
    volumes = ec2.describe_volumes(VolumeIds=ids)["Volumes"]
    return {v["Attachments"][0]["Device"]: v for v in volumes}


def identity(ec2, instance_id: str) -> dict:
    """What an in-place restore must not change."""
    found = instance(ec2, instance_id)
    nics = sorted(found["NetworkInterfaces"], key=lambda n: n["Attachment"]["DeviceIndex"])
    addresses = ec2.describe_addresses(Filters=[{"Name": "instance-id", "Values": [instance_id]}])
    return {
        "interfaces": [(n["NetworkInterfaceId"], sorted(a["PrivateIpAddress"] for a in
                        n["PrivateIpAddresses"])) for n in nics],
        "elastic_ips": sorted(a["AllocationId"] for a in addresses["Addresses"]),
        "tags": sorted((k, v) for k, v in tags_of(found).items() if k != TAG_IN_PLACE),
        "type": found["InstanceType"],
    }  # fmt: skip


@pytest.fixture
def broken(ec2, fleet, tmp_path, endpoint):
    """web01 with two data volumes and in a target group, backed up, then broken: /dev/sdg
    lost for good."""
    web = fleet.instances["web01"]
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=endpoint.url)
    made = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=fleet.vpc_id)
    group = made["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=group, Targets=[{"Id": web}])
    fleet.group_arn = group
    zone = instance(ec2, web)["Placement"]["AvailabilityZone"]
    for device, size in DATA.items():
        volume = ec2.create_volume(AvailabilityZone=zone, Size=size, VolumeType="gp3",
                                   TagSpecifications=[{"ResourceType": "volume", "Tags": [
                                       {"Key": "Role", "Value": device}]}])["VolumeId"]  # fmt: skip
        ec2.attach_volume(VolumeId=volume, InstanceId=web, Device=device)
    assert run("ec2_to_ami.py", only(tmp_path, fleet, "web01")).returncode == 0
    lost = disks(ec2, web)["/dev/sdg"]["VolumeId"]
    ec2.detach_volume(VolumeId=lost, InstanceId=web, Device="/dev/sdg")
    ec2.delete_volume(VolumeId=lost)
    SETTINGS.instance_pending_seconds = 0.1
    return fleet


def only(tmp_path, fleet, server: str, name: str = "backup.py"):
    """The backup config of one server of the fleet."""
    servers = [{"name": server, "instance_id": fleet.instances[server]}]
    return backup_config(tmp_path, fleet, name, SERVERS=servers, SELECT_TAGS={})


def in_place(tmp_path, *args: str, **settings):
    config = write_config(tmp_path / "r.py", WAIT="running", **settings)
    return run("ami_to_ec2.py", config, "--in-place", *args)


def backup_snapshots(ec2, server: str) -> dict[str, str]:
    [image] = managed(ec2, server)
    return {m["DeviceName"]: m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]}


def test_a_linux_server_gets_its_three_disks_back_and_keeps_everything_else(
    ec2, broken, tmp_path, endpoint
):
    web = broken.instances["web01"]
    before, old = identity(ec2, web), disks(ec2, web)
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=endpoint.url)
    result = in_place(tmp_path, "--yes", "--json", SERVER="web01")
    assert result.returncode == 0, result.stderr
    report = documented(result, "restore-in-place")  # the plan went to stderr
    assert report["result"] == "ok" and report["instance"] == web
    assert identity(ec2, web) == before  # the same instance, interfaces, addresses, EIP, tags
    members = elbv2.describe_target_health(TargetGroupArn=broken.group_arn)
    assert [t["Target"]["Id"] for t in members["TargetHealthDescriptions"]] == [web]
    now, snapshots = disks(ec2, web), backup_snapshots(ec2, "web01")
    assert {d: v["SnapshotId"] for d, v in now.items()} == snapshots
    assert now["/dev/sdf"]["VolumeType"] == "gp3" and tags_of(now["/dev/sdf"])["Role"] == "/dev/sdf"
    for device in ("/dev/sda1", "/dev/sdf"):  # the old ones: detached, kept, tagged
        [kept] = ec2.describe_volumes(VolumeIds=[old[device]["VolumeId"]])["Volumes"]
        run_id, tagged_device, tagged_instance, _ = tags_of(kept)[TAG_REPLACED_BY_RESTORE].split()
        assert (kept["State"], tagged_device, tagged_instance) == ("available", device, web)
        assert run_id == report["run"]
    assert instance(ec2, web)["State"]["Name"] == "running"
    assert TAG_IN_PLACE not in tags_of(instance(ec2, web))
    [image] = managed(ec2, "web01")
    assert tags_of(image)[TAG_RESTORED_IN_PLACE].split()[1:] == [web, report["run"]]
    assert (
        endpoint.count("CreateReplaceRootVolumeTask") == 1 and endpoint.count("StopInstances") == 1
    )

    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py"), "--rollback", report["run"],
                 "--yes")  # fmt: skip
    assert result.returncode == 0, result.stderr
    back = disks(ec2, web)
    assert {d: back[d]["VolumeId"] for d in ("/dev/sda1", "/dev/sdf")} == {
        d: old[d]["VolumeId"] for d in ("/dev/sda1", "/dev/sdf")}  # fmt: skip
    assert TAG_REPLACED_BY_RESTORE not in tags_of(back["/dev/sda1"])
    assert instance(ec2, web)["State"]["Name"] == "running"
    assert now["/dev/sda1"]["VolumeId"] in result.stdout  # the restore's own, named for you


@pytest.mark.parametrize(("server", "data"), [("win01", False), ("win01", True),
                                             ("app01", False)])  # fmt: skip
def test_windows_and_linux_servers_with_one_or_three_disks_come_back_in_place(
    ec2, fleet, tmp_path, endpoint, server, data
):
    instance_id = fleet.instances[server]
    zone = instance(ec2, instance_id)["Placement"]["AvailabilityZone"]
    for device, size in DATA.items() if data else ():
        volume = ec2.create_volume(AvailabilityZone=zone, Size=size)["VolumeId"]
        ec2.attach_volume(VolumeId=volume, InstanceId=instance_id, Device=device)
    assert run("ec2_to_ami.py", only(tmp_path, fleet, server)).returncode == 0
    before = identity(ec2, instance_id)
    result = in_place(tmp_path, "--yes", SERVER=server)
    assert result.returncode == 0, result.stderr
    assert identity(ec2, instance_id) == before
    restored = {d: v["SnapshotId"] for d, v in disks(ec2, instance_id).items()}
    assert restored == backup_snapshots(ec2, server) and len(restored) == (3 if data else 1)
    assert endpoint.count("StopInstances") == (1 if data else 0)  # one disk: no stop at all
    assert "RTO" in result.stdout and "RPO" in result.stdout


def test_the_dry_run_shows_the_plan_and_changes_nothing(ec2, broken, tmp_path, endpoint):
    calls = len(endpoint.calls)
    result = in_place(tmp_path, "--dry-run", SERVER="web01")
    assert result.returncode == 0, result.stderr
    assert "/dev/sda1 (root)" in result.stdout and "root volume replacement task" in result.stdout
    assert "/dev/sdg: nothing -> a new 30 GiB volume from snap-" in result.stdout
    assert "stopped, then started again" in result.stdout and " ago" in result.stdout
    changes = [c.action for c in endpoint.calls[calls:] if not c.action.startswith("Describe")]
    assert changes == []


def test_a_backup_of_another_instance_is_refused_before_any_change(ec2, fleet, tmp_path, endpoint):
    assert run("ec2_to_ami.py", only(tmp_path, fleet, "app01")).returncode == 0
    calls = len(endpoint.calls)
    result = in_place(tmp_path, "--yes", SERVER="app01", INSTANCE_ID=fleet.instances["web01"])
    assert result.returncode == 1 and "was made from" in result.stderr
    assert "an in-place restore puts back this server's own disks only" in result.stderr
    assert "nothing changed" in result.stderr
    assert [c for c in endpoint.calls[calls:] if not c.action.startswith("Describe")] == []


def test_without_yes_outside_a_terminal_nothing_is_asked_of_aws(fleet, tmp_path, endpoint):
    calls = len(endpoint.calls)
    result = in_place(tmp_path, SERVER="web01")
    assert result.returncode == 2 and "add --yes" in result.stderr
    assert len(endpoint.calls) == calls


def test_a_failed_root_task_changes_nothing_else_and_says_how_to_go_on(
    ec2, broken, tmp_path, endpoint
):
    web = broken.instances["web01"]
    old = disks(ec2, web)
    VOLUMES.fail_root_tasks_of = {web}
    result = in_place(tmp_path, "--yes", SERVER="web01")
    assert result.returncode == 1
    assert "root volume replacement task" in result.stderr and "failed" in result.stderr
    assert "--rollback" in result.stderr and "Rerun the same command" in result.stderr
    assert {d: v["VolumeId"] for d, v in disks(ec2, web).items()} == {
        d: v["VolumeId"] for d, v in old.items()}  # fmt: skip
    assert endpoint.count("StopInstances") == 0
    backup = run("ec2_to_ami.py", only(tmp_path, broken, "web01", "b2.py"))
    assert backup.returncode == 1 and "an in-place restore (run " in backup.stderr  # held off


@pytest.mark.parametrize("action", ["CreateReplaceRootVolumeTask", "StopInstances",
                                    "CreateVolume", "DetachVolume", "StartInstances"])  # fmt: skip
def test_a_run_that_fails_at_any_step_is_finished_by_the_next(
    ec2, broken, tmp_path, endpoint, action
):
    web = broken.instances["web01"]
    endpoint.inject(action, "InternalError", 500, times=20)
    first = in_place(tmp_path, "--yes", SERVER="web01")
    assert first.returncode == 1 and "Rerun the same command" in first.stderr
    endpoint.faults.clear()
    again = in_place(tmp_path, "--yes", SERVER="web01")
    assert again.returncode == 0, again.stderr
    assert "did not finish (" in again.stdout and "this run goes on" in again.stdout
    assert {d: v["SnapshotId"] for d, v in disks(ec2, web).items()} == backup_snapshots(
        ec2, "web01")  # fmt: skip
    made = ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": [TAG_IN_PLACE_VOLUME]}])
    assert len(made["Volumes"]) == 3  # one per device, however many runs
    assert instance(ec2, web)["State"]["Name"] == "running"


def test_a_run_killed_while_swapping_is_finished_by_the_next(ec2, broken, tmp_path, endpoint):
    web = broken.instances["web01"]
    config = write_config(tmp_path / "r.py", WAIT="running", SERVER="web01")
    proc = subprocess.Popen(script_command("ami_to_ec2.py", config, "--in-place", "--yes"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def kill_at(call) -> None:
        if call.action == "AttachVolume":
            proc.send_signal(signal.SIGKILL)

    endpoint.hooks.append(kill_at)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    endpoint.hooks.clear()
    wait_for(lambda: all(c.status for c in endpoint.calls), "the answer to the dying call")
    result = run("ami_to_ec2.py", config, "--in-place", "--yes")
    assert result.returncode == 0, result.stderr
    assert {d: v["SnapshotId"] for d, v in disks(ec2, web).items()} == backup_snapshots(
        ec2, "web01")  # fmt: skip
