"""Fleet restore: several servers in one run, launched at RunInstances' pace and polled
together, each with its own recorded configuration; one server's failure stops no other."""

from __future__ import annotations

from collections import Counter

import pytest

from localaws.endpoint import SETTINGS
from localaws.fleet import launch
from tests.conftest import backup_config, documented, managed, run, tags_of, write_config

FIVE = ["app01", "cache01", "db01", "web01", "win01"]


@pytest.fixture
def lost(ec2, fleet, tmp_path):
    """Five servers (win01 found by SELECT_TAGS) backed up once, then all terminated, as
    in a lost zone; new instances pend for a fifth of a second."""
    launch(ec2, fleet, "db01", InstanceType="m5.large")
    launch(ec2, fleet, "cache01")
    servers = [{"name": n, "instance_id": fleet.instances[n]}
               for n in ("web01", "app01", "db01", "cache01")]  # fmt: skip
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet, SERVERS=servers)).returncode == 0
    ec2.terminate_instances(InstanceIds=list(fleet.instances.values()))
    SETTINGS.instance_pending_seconds = 0.2
    return fleet


def restored(ec2) -> dict[str, dict]:
    """The live restored instances, by their Name."""
    filters = [{"Name": "tag-key", "Values": ["ec2-to-ami:restored-from"]},
               {"Name": "instance-state-name", "Values": ["pending", "running"]}]  # fmt: skip
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return {tags_of(i)["Name"]: i for r in reservations for i in r["Instances"]}


def test_all_restores_every_server_and_one_failure_stops_no_other(ec2, endpoint, lost, tmp_path):
    db_image = managed(ec2, "db01")[0]["ImageId"]
    before = len(endpoint.calls)
    SETTINGS.no_capacity = {"m5.large"}  # db01's type, for as long as the run lasts
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py"), "--all")
    made = Counter(c.action for c in endpoint.calls[before:] if c.status < 400)
    assert result.returncode == 1
    assert "db01: AWS error: InsufficientInstanceCapacity" in result.stderr
    assert "EC2 has no m5.large capacity there now: set INSTANCE_TYPE" in result.stderr
    # A capacity error is not retried: the rest of the fleet never waits on it.
    assert endpoint.count("RunInstances", ImageId=db_image) == 1
    new = restored(ec2)
    assert sorted(new) == ["app01", "cache01", "web01", "win01"]
    for name, instance in new.items():  # each from its own backup, with its own configuration
        assert instance["State"]["Name"] == "running"
        assert tags_of(instance)["ec2-to-ami:restored-from"] == managed(ec2, name)[0]["ImageId"]
        assert instance["SubnetId"] == lost.subnet_id and instance["KeyName"] == "ops-key"
    [address] = ec2.describe_addresses(AllocationIds=[lost.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == new["web01"]["InstanceId"]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:6]}
    assert sorted(rows) == FIVE
    assert rows["db01"][-1] == "FAILED" and rows["db01"][3] == "-"
    assert all(rows[n][-1] == "ok" for n in FIVE if n != "db01")
    assert "4 of 5 servers restored" in result.stdout and "failed: db01" in result.stdout
    # Each describe is made once for the fleet, not once a server.
    for action in ("DescribeImages", "DescribeSubnets", "DescribeSecurityGroups",
                   "DescribeKeyPairs", "DescribeInstanceTypes"):  # fmt: skip
        assert made[action] == 1, (action, made)
    assert made["RunInstances"] == 4
    assert made["GetLaunchTemplateData"] == 4  # the twin check, one per instance


def test_several_servers_report_their_backups_age_and_timings_as_json(ec2, lost, tmp_path):
    config = write_config(tmp_path / "r.py", SERVERS=["web01", "db01"])
    result = run("ami_to_ec2.py", config, "--json")
    assert result.returncode == 0, result.stderr
    report = documented(result, "restore-result")
    assert [s["server"] for s in report["servers"]] == ["web01", "db01"]
    assert report["failed"] == [] and report["wall_seconds"] > 0
    for server in report["servers"]:
        assert server["image_id"] == managed(ec2, server["server"])[0]["ImageId"]
        assert server["backup_age_seconds"] >= 0 and server["backup_time"].endswith("Z")
        steps = ["image_resolved", "run_instances_accepted", "running", "status_ok"]
        times = [server["timings"][step] for step in steps]
        assert times == sorted(times), times
        [instance] = server["instances"]
        assert instance["state"] == "running" and instance["name"] == server["server"]
        assert server["differences"] == [] and server["error"] is None
    db = ec2.describe_instances(InstanceIds=[report["servers"][1]["instances"][0]["instance_id"]])
    assert db["Reservations"][0]["Instances"][0]["InstanceType"] == "m5.large"  # its own


def test_a_fleet_launches_at_the_run_instances_bucket_pace_with_nothing_throttled(
    ec2, endpoint, lost, tmp_path
):
    endpoint.throttle()  # EC2's buckets: RunInstances has 5 tokens, then 2 a second
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", WAIT="running"), "--all")
    assert result.returncode == 0, result.stderr
    assert len(restored(ec2)) == 5
    assert endpoint.count("RunInstances", ok=False) == 0  # paced, never refused


def test_all_names_a_server_whose_backups_are_all_disabled_and_fails_it(ec2, lost, tmp_path):
    [image] = managed(ec2, "cache01")
    ec2.disable_image(ImageId=image["ImageId"])
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", WAIT="running"), "--all")
    assert result.returncode == 1
    assert f"cache01: server 'cache01' has only disabled backups ({image['ImageId']})" in (
        result.stderr
    )
    assert "name it with --ami" in result.stderr
    assert sorted(restored(ec2)) == ["app01", "db01", "web01", "win01"]
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("cache01"))
    assert row[-1] == "FAILED"


def test_a_missing_server_fails_alone(ec2, lost, tmp_path):
    config = write_config(tmp_path / "r.py", WAIT="running")
    result = run("ami_to_ec2.py", config, "--server", "web01", "--server", "nosuch")
    assert result.returncode == 1
    assert "nosuch: no available backup of server 'nosuch'" in result.stderr
    assert sorted(restored(ec2)) == ["web01"]


@pytest.mark.parametrize(
    ("settings", "args", "message"),
    [
        ({"NAME": "x"}, ["--all"], "NAME is set, but this run restores several servers"),
        ({"PRIVATE_IP": "10.20.1.50"}, ["--server", "a", "--server", "b"], "PRIVATE_IP is set"),
        ({"ELASTIC_IP": "eipalloc-0123456789abcdef0", "SERVERS": ["a", "b"]}, [],
         "ELASTIC_IP is set"),
        ({"SERVERS": ["a", "b"], "AMI_ID": "ami-0123456789abcdef0"}, [],
         "set exactly one of SERVER, SERVERS and AMI_ID"),
        ({"SERVERS": ["a", "a"]}, [], "SERVERS names a more than once"),
        ({"SERVERS": "a"}, [], "SERVERS must be None or a non-empty list"),
        ({"DNS_RECORDS": [{"zone_id": "Z1", "name": "a", "type": "A", "value": "private"}]},
         ["--all"], "DNS_RECORDS is set"),
        ({"COUNT": 2}, ["--all"], "COUNT must be 1"),
    ],
)  # fmt: skip
def test_settings_for_one_server_are_config_errors_in_a_fleet(
    endpoint, tmp_path, settings, args, message
):
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", **settings), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert endpoint.count() == 0


def test_a_fleet_dry_run_plans_every_server_and_launches_nothing(ec2, endpoint, lost, tmp_path):
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py"), "--all", "--dry-run")
    assert result.returncode == 0, result.stderr
    for name in FIVE:
        assert f"== {name}" in result.stdout
    assert result.stdout.count("DryRun: EC2 accepts") == 5
    assert restored(ec2) == {}
