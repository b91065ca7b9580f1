"""Drills that are isolated and leave nothing behind: no public IP, no production
placement, every interface and volume deleted with its instance, debris of earlier drills
swept on evidence EC2 records, and one drill never ending another's instances."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from ec2ami.contract import TAG_DRILL, TAG_DRILL_DEADLINE, TAG_DRILL_RUN, TAG_RESTORED_FROM
from ec2ami.restore.leftovers import DEADLINE_FORMAT
from localaws.endpoint import SETTINGS, _backends, age_instance
from localaws.fleet import REGION, build_network, drill_network, kitchen_sink
from tests.conftest import drill_config, later, managed, run, write_config


@pytest.fixture
def kitchen(ec2, iam, endpoint, tmp_path):
    """linux01: two interfaces (the second kept at termination), a partition placement
    group, and a data volume attached after launch (kept at termination), backed up once;
    a drill subnet that maps public IPs on launch."""
    make = lambda service: boto3.client(service, region_name=REGION, endpoint_url=endpoint.url)  # noqa: E731
    fleet = build_network(ec2, iam)
    instance_id = kitchen_sink(ec2, make("elbv2"), make("elb"), fleet, "linux01")
    zone = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
        "Placement"]["AvailabilityZone"]  # fmt: skip
    data = ec2.create_volume(AvailabilityZone=zone, Size=20)["VolumeId"]
    ec2.attach_volume(VolumeId=data, InstanceId=instance_id, Device="/dev/sdf")
    servers = [{"name": "linux01", "instance_id": instance_id}]
    assert (
        run("ec2_to_ami.py", write_config(tmp_path / "backup.py", SERVERS=servers)).returncode == 0
    )
    fleet.drill_subnet, fleet.drill_group = drill_network(ec2, fleet)
    ec2.modify_subnet_attribute(SubnetId=fleet.drill_subnet, MapPublicIpOnLaunch={"Value": True})
    SETTINGS.instance_pending_seconds = 0.1
    return fleet


def drill_tagged(ec2, kind: str) -> list[dict]:
    """Every instance, volume or interface a drill tagged, as the endpoint reports it."""
    tagged = [{"Name": "tag-key", "Values": [TAG_DRILL]}]
    if kind == "instances":
        pages = ec2.describe_instances(Filters=tagged)["Reservations"]
        return [i for r in pages for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    if kind == "volumes":
        return ec2.describe_volumes(Filters=tagged)["Volumes"]
    return ec2.describe_network_interfaces(Filters=tagged)["NetworkInterfaces"]


def public_ips_at_termination(endpoint) -> dict[str, str | None]:
    """Each instance's public IP just before TerminateInstances reaches the endpoint."""
    seen: dict[str, str | None] = {}

    def hook(call):
        if call.action != "TerminateInstances":
            return
        ids = [v for k, v in call.params.items() if k.startswith("InstanceId.")]
        for backend in _backends():
            for instance in backend.all_instances():
                if instance.id in ids:
                    seen[instance.id] = instance.public_ip

    endpoint.hooks.append(hook)
    return seen


def test_a_kitchen_sink_drill_has_no_public_ip_nor_production_placement_and_leaves_nothing(
    ec2, endpoint, kitchen, tmp_path
):
    public = public_ips_at_termination(endpoint)
    result = run("ami_to_ec2.py", drill_config(tmp_path, kitchen), "--drill", "--server", "linux01")
    assert result.returncode == 0, result.stderr
    assert "DRILL_SUBNET_ID" not in result.stderr  # the drill network is not production's
    [launched] = public
    assert public[launched] is None  # in a subnet that maps public IPs on launch
    drilled = ec2.describe_instances(InstanceIds=[launched])["Reservations"][0]["Instances"][0]
    assert drilled["State"]["Name"] in ("shutting-down", "terminated")
    assert not drilled["Placement"].get("GroupName")
    assert drilled["Placement"].get("PartitionNumber") is None
    # Its two interfaces and its three volumes (root, the image's second device and the
    # data volume attached after launch) went with it, though the original keeps two.
    assert drill_tagged(ec2, "instances") == []
    assert drill_tagged(ec2, "network-interfaces") == []
    assert drill_tagged(ec2, "volumes") == []


def test_drill_placement_keeps_production_placement_when_asked(ec2, kitchen, tmp_path):
    config = drill_config(tmp_path, kitchen)
    plain = run("ami_to_ec2.py", config, "--drill", "--server", "linux01", "--dry-run")
    assert plain.returncode == 0, plain.stderr
    assert "placement group" in plain.stdout and "kitchen-pg" not in plain.stdout
    kept = run("ami_to_ec2.py", drill_config(tmp_path, kitchen, DRILL_PLACEMENT=True), "--drill",
               "--server", "linux01", "--dry-run")  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert "kitchen-pg" in kept.stdout


def other_drills_instance(ec2, fleet, image_id: str, minutes_left: float) -> str:
    """A live instance of another drill config's run, tagged as a drill tags it."""
    deadline = datetime.now(timezone.utc) + timedelta(minutes=minutes_left)
    tags = {
        TAG_DRILL: "web01",
        TAG_DRILL_RUN: "ec2-to-ami-other",
        TAG_DRILL_DEADLINE: f"{deadline:{DEADLINE_FORMAT}}",
        TAG_RESTORED_FROM: image_id,
    }
    return ec2.run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        SubnetId=fleet.drill_subnet, TagSpecifications=[{"ResourceType": kind, "Tags": [
            {"Key": k, "Value": v} for k, v in tags.items()]}
            for kind in ("instance", "volume", "network-interface")],
    )["Instances"][0]["InstanceId"]  # fmt: skip


def test_a_short_drill_never_ends_a_longer_drills_live_instance(
    ec2, drilled, tmp_path, monkeypatch
):
    image_id = managed(ec2, "web01")[0]["ImageId"]
    # A 60-minute drill's instance, 15 minutes old: its deadline is 105 minutes away.
    other = other_drills_instance(ec2, drilled, image_id, minutes_left=105)
    age_instance(other, 15 * 60)
    short = drill_config(tmp_path, drilled, DRILL_TIMEOUT_MINUTES=5)
    result = run("ami_to_ec2.py", short, "--drill", "--server", "app01")
    assert result.returncode == 0, result.stderr
    assert [i["InstanceId"] for i in drill_tagged(ec2, "instances")] == [other]
    # Once its own deadline has passed, the next drill ends it, and logs that it did.
    later(monkeypatch, 106)
    result = run("ami_to_ec2.py", short, "--drill", "--server", "app01")
    assert result.returncode == 0, result.stderr
    assert drill_tagged(ec2, "instances") == []
    lines = [json.loads(line) for line in (tmp_path / "drill.log").read_text().splitlines()]
    assert [c["cleanup"]["instances"] for c in lines if "cleanup" in c] == [[other]]


def test_the_detached_debris_of_earlier_drills_is_deleted_on_evidence_and_logged(
    ec2, drilled, tmp_path
):
    image = managed(ec2, "web01")[0]
    snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    zone = ec2.describe_subnets(SubnetIds=[drilled.drill_subnet])["Subnets"][0]["AvailabilityZone"]

    def tagged(kind: str, extra: dict | None = None) -> list[dict]:
        tags = {TAG_DRILL: "web01", TAG_RESTORED_FROM: image["ImageId"], **(extra or {})}
        return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]

    debris_volume = ec2.create_volume(AvailabilityZone=zone, SnapshotId=snapshot,
                                      TagSpecifications=tagged("volume"))["VolumeId"]  # fmt: skip
    forged_volume = ec2.create_volume(AvailabilityZone=zone, Size=50,
                                      TagSpecifications=tagged("volume"))["VolumeId"]  # fmt: skip
    debris_nic = ec2.create_network_interface(
        SubnetId=drilled.drill_subnet, TagSpecifications=tagged("network-interface")
    )["NetworkInterface"]["NetworkInterfaceId"]
    production_nic = ec2.create_network_interface(
        SubnetId=drilled.subnet_id, TagSpecifications=tagged("network-interface")
    )["NetworkInterface"]["NetworkInterfaceId"]
    dry = run("ami_to_ec2.py", drill_config(tmp_path, drilled), "--drill", "--server", "web01",
              "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert f"Would delete volume {debris_volume}" in dry.stdout
    assert f"Would delete network interface {debris_nic}" in dry.stdout
    assert f"Would keep volume {forged_volume}" in dry.stdout
    result = run("ami_to_ec2.py", drill_config(tmp_path, drilled), "--drill", "--server", "web01")
    assert result.returncode == 0, result.stderr
    assert [v["VolumeId"] for v in drill_tagged(ec2, "volumes")] == [forged_volume]
    assert [n["NetworkInterfaceId"] for n in drill_tagged(ec2, "network-interfaces")] == [
        production_nic
    ]
    assert f"volume {forged_volume} is tagged {TAG_DRILL} and detached" in result.stderr
    [cleanup] = [json.loads(x)["cleanup"] for x in (tmp_path / "drill.log").read_text().splitlines()
                 if "cleanup" in x]  # fmt: skip
    assert cleanup["volumes"] == [debris_volume] and cleanup["network_interfaces"] == [debris_nic]


def test_a_drill_network_that_is_productions_is_named_in_warnings_and_errors(
    ec2, endpoint, drilled, tmp_path
):
    same = drill_config(tmp_path, drilled)
    same = write_config(tmp_path / "same.py", DRILL_SUBNET_ID=drilled.subnet_id,
                        DRILL_SECURITY_GROUP_IDS=drilled.group_ids[:1])  # fmt: skip
    result = run("ami_to_ec2.py", same, "--drill", "--server", "web01", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"DRILL_SUBNET_ID {drilled.subnet_id} is the subnet the original ran in" in result.stderr
    assert f"DRILL_SECURITY_GROUP_IDS {drilled.group_ids[0]}: the original ran in" in result.stderr
    other_vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    stray = ec2.create_security_group(GroupName="stray", Description="x", VpcId=other_vpc)
    wrong = write_config(tmp_path / "wrong.py", DRILL_SUBNET_ID=drilled.drill_subnet,
                         DRILL_SECURITY_GROUP_IDS=[stray["GroupId"]])  # fmt: skip
    result = run("ami_to_ec2.py", wrong, "--drill", "--server", "web01")
    assert result.returncode == 1
    assert "set DRILL_SUBNET_ID and DRILL_SECURITY_GROUP_IDS" in result.stderr
    assert drill_tagged(ec2, "instances") == []


def test_a_drill_refuses_production_network_flags_before_any_aws_call(endpoint, drilled, tmp_path):
    before = len(endpoint.calls)
    result = run("ami_to_ec2.py", drill_config(tmp_path, drilled), "--drill", "--server", "web01",
                 "--subnet-id", drilled.subnet_id)  # fmt: skip
    assert result.returncode == 2
    assert "--subnet-id does not apply to a drill" in result.stderr
    result = run("ami_to_ec2.py", drill_config(tmp_path, drilled), "--drill", "--all",
                 "--security-group-ids", drilled.group_ids[0])  # fmt: skip
    assert result.returncode == 2 and "DRILL_SECURITY_GROUP_IDS" in result.stderr
    assert len(endpoint.calls) == before
