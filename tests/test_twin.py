"""A restore makes a twin: every attribute the original ran with, read back from the
endpoint, or a warning that names what could not be reproduced (issue 13)."""

from __future__ import annotations

import ipaddress
import re

import boto3
import pytest

from ec2ami.restore.launch import statuses_ok
from localaws.endpoint import SETTINGS
from localaws.fleet import REGION, build_network, kitchen_sink
from tests.conftest import documented, managed, run, tags_of, write_config

ATTRIBUTES = ["disableApiTermination", "disableApiStop", "instanceInitiatedShutdownBehavior"]


@pytest.fixture
def clients(endpoint):
    """ELBv2 and Classic ELB on the endpoint."""
    make = lambda service: boto3.client(service, region_name=REGION, endpoint_url=endpoint.url)  # noqa: E731
    return {"elbv2": make("elbv2"), "elb": make("elb"), "route53": make("route53")}


@pytest.fixture
def kitchen(ec2, iam, clients, tmp_path):
    """linux01 and win01, every attribute away from its default, backed up once."""
    fleet = build_network(ec2, iam)
    kitchen_sink(ec2, clients["elbv2"], clients["elb"], fleet, "linux01")
    kitchen_sink(ec2, clients["elbv2"], clients["elb"], fleet, "win01", windows=True)
    servers = [{"name": n, "instance_id": fleet.instances[n]} for n in ("linux01", "win01")]
    config = write_config(tmp_path / "backup.py", SERVERS=servers, KEEP=2)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    SETTINGS.instance_pending_seconds = 0.1
    return fleet


def instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def twin_view(ec2, clients, instance_id: str) -> dict:
    """What an operator would compare, read from the endpoint."""
    found = instance(ec2, instance_id)
    nics = sorted(found["NetworkInterfaces"], key=lambda n: n["Attachment"]["DeviceIndex"])
    credits = ec2.describe_instance_credit_specifications(InstanceIds=[instance_id])
    return {
        "type": found["InstanceType"],
        "key": found.get("KeyName"),
        "profile": found.get("IamInstanceProfile", {}).get("Arn"),
        "placement": {k: v for k, v in found["Placement"].items() if k != "AvailabilityZone"},
        "cpu": found.get("CpuOptions"),
        "credits": credits["InstanceCreditSpecifications"][0]["CpuCredits"],
        "ebs_optimized": found.get("EbsOptimized"),
        "monitoring": found["Monitoring"]["State"],
        "metadata": {k: v for k, v in found["MetadataOptions"].items() if k != "State"},
        "dns names": found.get("PrivateDnsNameOptions"),
        "maintenance": found.get("MaintenanceOptions"),
        "hibernation": found.get("HibernationOptions"),
        "enclave": found.get("EnclaveOptions"),
        "capacity": found.get("CapacityReservationSpecification"),
        "protections": protections(ec2, instance_id),
        "interfaces": [interface_view(n, elastic_ips(ec2)) for n in nics],
        "elastic ips": elastic_slots(ec2, instance_id, nics),
        "balancers": balancer_view(clients, instance_id),
        "tags": {k: v for k, v in tags_of(found).items() if not k.startswith("ec2-to-ami:")},
    }


def protections(ec2, instance_id: str) -> list:
    """Termination and stop protection, and shutdown behaviour."""
    values = []
    for attribute in ATTRIBUTES:
        answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=attribute)
        values += [v["Value"] for v in answer.values() if isinstance(v, dict) and "Value" in v]
    return values


def elastic_ips(ec2) -> set[str]:
    return {a["PublicIp"] for a in ec2.describe_addresses()["Addresses"]}


def interface_view(nic: dict, elastic: set[str]) -> tuple:
    """An interface: index, subnet, groups, secondary IPs, description, source/dest check,
    delete on termination, and whether it has a public IP of its own."""
    public = nic.get("Association", {}).get("PublicIp", "")
    return (
        nic["Attachment"]["DeviceIndex"], nic["SubnetId"],
        sorted(g["GroupId"] for g in nic["Groups"]), len(nic["PrivateIpAddresses"]) - 1,
        nic["Description"], nic["SourceDestCheck"], nic["Attachment"]["DeleteOnTermination"],
        public not in elastic | {""},
    )  # fmt: skip


def elastic_slots(ec2, instance_id: str, nics: list[dict]) -> list[tuple[int, int]]:
    """Where the instance's Elastic IPs sit: (device index, address slot; 0 is primary)."""
    slots = {}
    for nic in nics:
        addresses = nic["PrivateIpAddresses"]
        primary = [a["PrivateIpAddress"] for a in addresses if a["Primary"]]
        secondary = sorted((a["PrivateIpAddress"] for a in addresses if not a["Primary"]),
                           key=ipaddress.IPv4Address)  # fmt: skip
        for slot, address in enumerate(primary + secondary):
            slots[(nic["NetworkInterfaceId"], address)] = (nic["Attachment"]["DeviceIndex"], slot)
    filters = [{"Name": "instance-id", "Values": [instance_id]}]
    held = ec2.describe_addresses(Filters=filters)["Addresses"]
    return sorted(slots[(a["NetworkInterfaceId"], a["PrivateIpAddress"])] for a in held)


def balancer_view(clients, instance_id: str) -> tuple[list, int]:
    """The instance's ports in the kitchen target group, and its Classic ELB membership."""
    group = clients["elbv2"].describe_target_groups(Names=["kitchen"])["TargetGroups"][0]
    health = clients["elbv2"].describe_target_health(TargetGroupArn=group["TargetGroupArn"])
    ports = [t["Target"].get("Port") for t in health["TargetHealthDescriptions"]
             if t["Target"]["Id"] == instance_id]  # fmt: skip
    classic = clients["elb"].describe_load_balancers(LoadBalancerNames=["kitchen"])
    members = [i["InstanceId"] for i in classic["LoadBalancerDescriptions"][0]["Instances"]]
    return sorted(ports), members.count(instance_id)


def retire(ec2, instance_id: str) -> None:
    """Terminate an original, lifting its protections first, as an operator would."""
    for attribute in ("DisableApiTermination", "DisableApiStop"):
        ec2.modify_instance_attribute(InstanceId=instance_id, **{attribute: {"Value": False}})
    ec2.terminate_instances(InstanceIds=[instance_id])


@pytest.mark.parametrize("server", ["linux01", "win01"])
def test_a_restore_by_server_name_alone_is_a_twin_of_the_original(
    ec2, clients, kitchen, tmp_path, server
):
    original_id = kitchen.instances[server]
    before = twin_view(ec2, clients, original_id)
    retire(ec2, original_id)
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER=server))
    assert result.returncode == 0, result.stderr
    [new_id] = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("i-")]
    after = twin_view(ec2, clients, new_id)
    protections = after.pop("protections")
    assert protections == before.pop("protections") == [True, True, "terminate"]
    assert after == before
    assert "no difference in" in result.stdout
    assert "DIFFERS" not in result.stdout and "WARNING" not in result.stderr


def restored_id(result) -> str:
    [new_id] = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("i-")]
    return new_id


def test_every_override_setting_wins_over_what_was_recorded(ec2, clients, kitchen, tmp_path):
    retire(ec2, kitchen.instances["linux01"])
    group = clients["elbv2"].create_target_group(
        Name="other", Protocol="HTTP", Port=80, VpcId=kitchen.vpc_id
    )["TargetGroups"][0]["TargetGroupArn"]
    overrides = {
        "TENANCY": "dedicated", "PLACEMENT_GROUP": False, "CREDIT_SPECIFICATION": "standard",
        "INSTANCE_TYPE": "t3.medium", "CPU_OPTIONS": {"CoreCount": 1, "ThreadsPerCore": 1},
        "NETWORK_INTERFACES": [{"subnet_id": kitchen.subnet_id,
                                "security_group_ids": kitchen.group_ids[1:],
                                "secondary_private_ips": 1, "description": "only"}],
        "PUBLIC_IP": True, "ELASTIC_IP": None,
        "TARGET_GROUPS": [{"arn": group, "port": 9000}], "CLASSIC_LOAD_BALANCERS": [],
        "TERMINATION_PROTECTION": False, "STOP_PROTECTION": False, "SHUTDOWN_BEHAVIOR": "stop",
        "MONITORING": False, "EBS_OPTIMIZED": False, "AUTO_RECOVERY": "default",
        "METADATA_OPTIONS": {"HttpPutResponseHopLimit": 3, "InstanceMetadataTags": "disabled"},
        "PRIVATE_DNS_NAME_OPTIONS": {"HostnameType": "ip-name"},
    }  # fmt: skip
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01", **overrides))
    assert result.returncode == 0, result.stderr
    new = instance(ec2, restored_id(result))
    assert new["Placement"]["Tenancy"] == "dedicated" and not new["Placement"].get("GroupName")
    assert new["CpuOptions"] == {"CoreCount": 1, "ThreadsPerCore": 1}
    credits = ec2.describe_instance_credit_specifications(InstanceIds=[new["InstanceId"]])
    assert credits["InstanceCreditSpecifications"][0]["CpuCredits"] == "standard"
    [nic] = new["NetworkInterfaces"]
    assert [g["GroupId"] for g in nic["Groups"]] == kitchen.group_ids[1:]
    assert (len(nic["PrivateIpAddresses"]), nic["Description"]) == (2, "only")
    assert nic["SourceDestCheck"] is True and new.get("PublicIpAddress")
    assert not ec2.describe_addresses(
        Filters=[{"Name": "instance-id", "Values": [new["InstanceId"]]}]
    )["Addresses"]
    health = clients["elbv2"].describe_target_health(TargetGroupArn=group)[
        "TargetHealthDescriptions"
    ]
    assert [(h["Target"]["Id"], h["Target"]["Port"]) for h in health] == [(new["InstanceId"], 9000)]
    members = clients["elb"].describe_load_balancers()["LoadBalancerDescriptions"][0]["Instances"]
    assert new["InstanceId"] not in [m["InstanceId"] for m in members]
    assert protections(ec2, new["InstanceId"]) == [False, False, "stop"]
    assert new["Monitoring"]["State"] == "disabled" and new["EbsOptimized"] is False
    assert new["MaintenanceOptions"] == {"AutoRecovery": "default"}
    assert new["MetadataOptions"]["HttpPutResponseHopLimit"] == 3
    assert new["MetadataOptions"]["InstanceMetadataTags"] == "disabled"
    assert new["MetadataOptions"]["HttpTokens"] == "required"  # still as recorded
    assert new["PrivateDnsNameOptions"]["HostnameType"] == "ip-name"
    assert "no difference in" in result.stdout


def test_a_dedicated_host_setting_places_the_instance_on_that_host(ec2, clients, kitchen, tmp_path):
    retire(ec2, kitchen.instances["win01"])
    zone = instance(ec2, kitchen.instances["linux01"])["Placement"]["AvailabilityZone"]
    hosts = ec2.allocate_hosts(AvailabilityZone=zone, InstanceType="m5.xlarge", Quantity=1)
    [host] = hosts["HostIds"]
    config = write_config(tmp_path / "r.py", SERVER="win01", TENANCY="host", HOST_ID=host)
    dry = run("ami_to_ec2.py", config, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry_run_attributes(dry.stdout)["host"] == (host, "overridden")
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 0, result.stderr
    placement = instance(ec2, restored_id(result))["Placement"]
    assert (placement["Tenancy"], placement["HostId"]) == ("host", host)


def dry_run_attributes(stdout: str) -> dict[str, tuple[str, str]]:
    """The dry run's attribute lines: name -> (value, origin)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()
            if line.startswith("    ")]  # fmt: skip
    return {row[0]: (row[1], row[2]) for row in rows}


def test_the_dry_run_shows_each_attribute_and_where_it_comes_from(ec2, kitchen, tmp_path):
    config = write_config(tmp_path / "r.py", SERVER="linux01", NAME="linux01-test",
                          METADATA_OPTIONS={"HttpPutResponseHopLimit": 3})  # fmt: skip
    before = len(ec2.describe_instances()["Reservations"])
    result = run("ami_to_ec2.py", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    rows = dry_run_attributes(result.stdout)
    assert rows["IMDS hop limit"] == ("3", "overridden")
    assert rows["placement group"] == ("kitchen-pg", "recorded")
    assert rows["interface 1 description"] == ("linux01 back", "recorded")
    assert rows["Nitro Enclaves"] == ("off", "recorded")  # recorded as EC2's default
    [eip] = [k for k in rows if k.startswith("Elastic IP") and rows[k][0].endswith("primary IP")]
    assert rows[eip] == ("interface 0 primary IP", "recorded")
    assert "DryRun: EC2 accepts this RunInstances request" in result.stdout
    assert len(ec2.describe_instances()["Reservations"]) == before


def test_json_carries_the_twin_check(ec2, kitchen, tmp_path):
    retire(ec2, kitchen.instances["win01"])
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="win01"), "--json")
    assert result.returncode == 0, result.stderr
    report = documented(result, "restore-result")
    assert report["differences"] == []
    by_name = {a["name"]: a for a in report["attributes"]}
    assert by_name["tenancy"] == {"name": "tenancy", "recorded": "dedicated",
                                  "planned": "dedicated", "origin": "recorded",
                                  "now": "dedicated", "same": True}  # fmt: skip
    assert by_name["public IP"]["now"] is True


def test_an_image_from_before_launch_records_restores_as_before(ec2, kitchen, tmp_path):
    [image] = managed(ec2, "linux01")
    launch = [{"Key": t["Key"]} for t in image["Tags"] if t["Key"].startswith("ec2-to-ami:launch")]
    ec2.delete_tags(Resources=[image["ImageId"]], Tags=launch)  # as the previous version tagged
    retire(ec2, kitchen.instances["linux01"])
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01"))
    assert result.returncode == 0, result.stderr
    assert "predates launch records: only the basics were recorded" in result.stderr
    new = instance(ec2, restored_id(result))
    assert new["InstanceType"] == "t2.medium" and new["SubnetId"] == kitchen.subnet_id
    assert sorted(g["GroupId"] for g in new["SecurityGroups"]) == sorted(kitchen.group_ids)
    assert new["MetadataOptions"]["HttpTokens"] == "required"
    assert len(new["NetworkInterfaces"]) == 1  # the old tags knew of one
    held = ec2.describe_addresses(Filters=[{"Name": "instance-id", "Values": [new["InstanceId"]]}])
    assert [a["PrivateIpAddress"] for a in held["Addresses"]] == [new["PrivateIpAddress"]]


def test_a_placement_group_that_is_gone_is_left_out_with_a_warning(ec2, kitchen, tmp_path):
    retire(ec2, kitchen.instances["linux01"])
    ec2.delete_placement_group(GroupName="kitchen-pg")
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01"))
    assert result.returncode == 0, result.stderr
    assert "placement group kitchen-pg no longer exists" in result.stderr
    assert not instance(ec2, restored_id(result))["Placement"].get("GroupName")
    assert "placement group" in result.stdout and "not reproducible" in result.stdout


def test_a_deleted_instance_profile_stops_the_restore_before_launch(
    ec2, iam, kitchen, tmp_path, endpoint
):
    iam.remove_role_from_instance_profile(InstanceProfileName="app-profile", RoleName="app-role")
    iam.delete_instance_profile(InstanceProfileName="app-profile")
    launched = endpoint.count("RunInstances")
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01"))
    assert result.returncode == 1
    assert "instance profile app-profile does not exist" in result.stderr
    assert "nothing launched" in result.stderr and "Traceback" not in result.stderr
    assert endpoint.count("RunInstances") == launched


def test_beside_a_live_original_target_groups_wait_and_windows_warns_of_its_name(
    ec2, clients, kitchen, tmp_path
):
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="win01",
                                                ELASTIC_IP=None))  # fmt: skip
    assert result.returncode == 0, result.stderr
    new_id = restored_id(result)
    assert "the same computer name and SID" in result.stderr and "HOSTNAME" in result.stderr
    assert "still registered and healthy, so the new instance was not registered" in result.stderr
    group = clients["elbv2"].describe_target_groups(Names=["kitchen"])["TargetGroups"][0]
    health = clients["elbv2"].describe_target_health(TargetGroupArn=group["TargetGroupArn"])
    assert new_id not in [t["Target"]["Id"] for t in health["TargetHealthDescriptions"]]
    assert tags_of(instance(ec2, new_id))["Name"] == "win01-restored"


def test_beside_a_live_original_no_production_facing_change_is_made(
    ec2, clients, kitchen, tmp_path
):
    """The Classic ELB and DNS follow the rule the Elastic IP and target group follow: while
    the original lives, the copy takes none of its production traffic, and says so."""
    route53 = clients["route53"]
    zone = route53.create_hosted_zone(Name="corp.internal", CallerReference="t")["HostedZone"]["Id"]
    records = [{"zone_id": zone, "name": "db.corp.internal", "type": "A", "value": "private"}]
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01",
                                                DNS_RECORDS=records))  # fmt: skip
    assert result.returncode == 0, result.stderr
    new_id = restored_id(result)
    assert balancer_view(clients, new_id) == ([], 0)
    assert "Classic Load Balancer kitchen: the original" in result.stderr
    assert "DNS records: db.corp.internal stay with the original" in result.stderr
    listed = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    assert not [r for r in listed if r["Name"] == "db.corp.internal."]


def test_dns_records_point_at_the_new_address_with_their_ttl(ec2, clients, kitchen, tmp_path):
    route53 = clients["route53"]
    zone = route53.create_hosted_zone(Name="corp.internal", CallerReference="t")["HostedZone"]["Id"]
    change = {"Action": "UPSERT", "ResourceRecordSet": {"Name": "db.corp.internal.", "Type": "A",
              "TTL": 60, "ResourceRecords": [{"Value": "10.9.9.9"}]}}  # fmt: skip
    route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [change]})
    retire(ec2, kitchen.instances["linux01"])
    records = [{"zone_id": zone, "name": "db.corp.internal", "type": "A", "value": "private"}]
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01",
                                                DNS_RECORDS=records))  # fmt: skip
    assert result.returncode == 0, result.stderr
    new = instance(ec2, restored_id(result))
    listed = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    [record] = [r for r in listed if r["Name"] == "db.corp.internal."]
    assert (record["TTL"], record["ResourceRecords"]) == (60, [{"Value": new["PrivateIpAddress"]}])


class OneHundredAtATime:
    """A DescribeInstanceStatus that refuses more than 100 ids, as EC2 does."""

    def __init__(self) -> None:
        self.calls = 0

    def describe_instance_status(self, InstanceIds, IncludeAllInstances):
        self.calls += 1
        assert len(InstanceIds) <= 100, "EC2 refuses more than 100 instance ids"
        ok = {"Status": "ok"}
        return {"InstanceStatuses": [{"InstanceId": i, "InstanceStatus": ok, "SystemStatus": ok}
                                     for i in InstanceIds]}  # fmt: skip


def test_status_checks_of_more_than_a_hundred_instances_are_asked_100_at_a_time():
    ec2 = OneHundredAtATime()
    ids = [f"i-{n:017x}" for n in range(250)]
    assert statuses_ok(ec2, ids) == set(ids)
    assert ec2.calls == 3


def test_load_balancers_the_backup_cannot_read_are_said_to_be_unknown_not_absent(
    ec2, iam, clients, endpoint, tmp_path
):
    fleet = build_network(ec2, iam)
    instance_id = kitchen_sink(ec2, clients["elbv2"], clients["elb"], fleet, "linux01")
    endpoint.inject("DescribeTargetGroups", "AccessDenied", 403)
    config = write_config(
        tmp_path / "b.py", SERVERS=[{"name": "linux01", "instance_id": instance_id}]
    )
    backup = run("ec2_to_ami.py", config)
    assert backup.returncode == 0, backup.stderr  # the backup itself is whole
    assert "load balancer membership is not recorded" in backup.stderr
    assert "AccessDenied" in backup.stderr
    listed = run("ami_to_ec2.py", write_config(tmp_path / "l.py"), "--list")
    assert listed.stdout.splitlines()[1].split()[-2] == "partial"
    retire(ec2, instance_id)
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01"))
    assert result.returncode == 0, result.stderr
    assert "not recorded by the backup: target_groups, classic_load_balancers" in result.stderr
    assert balancer_view(clients, restored_id(result)) == ([], 0)


def test_an_aws_error_before_launch_says_nothing_was_launched(ec2, kitchen, tmp_path, endpoint):
    endpoint.inject("DescribeSubnets", "UnauthorizedOperation", 403)
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="win01"))
    assert result.returncode == 1
    assert "AWS error: UnauthorizedOperation" in result.stderr
    assert "nothing launched" in result.stderr and "Traceback" not in result.stderr
    assert endpoint.count("RunInstances") == 2  # the kitchen's own two


def test_count_two_of_a_kitchen_sink_gives_the_second_its_own_name_and_addresses(
    ec2, clients, kitchen, tmp_path
):
    original = twin_view(ec2, clients, kitchen.instances["linux01"])
    retire(ec2, kitchen.instances["linux01"])
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="linux01", COUNT=2))
    assert result.returncode == 0, result.stderr
    ids = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("i-")]
    assert [tags_of(instance(ec2, i))["Name"] for i in ids] == ["linux01", "linux01-2"]
    first, second = (twin_view(ec2, clients, i) for i in ids)
    assert first["elastic ips"] == original["elastic ips"] and second["elastic ips"] == []
    assert first["balancers"] == ([8080], 1) and second["balancers"] == ([], 0)
    # the second has the same interfaces (new addresses), source/dest check off too
    assert [n[:6] for n in second["interfaces"]] == [n[:6] for n in original["interfaces"]]
    assert "go to the first instance (linux01) only" in result.stderr


def test_a_kitchen_sink_copy_restores_in_the_dr_region_through_region_map(
    ec2, iam, clients, endpoint, tmp_path
):
    fleet = build_network(ec2, iam)
    instance_id = kitchen_sink(ec2, clients["elbv2"], clients["elb"], fleet, "linux01")
    servers = [{"name": "linux01", "instance_id": instance_id}]
    backup = write_config(tmp_path / "b.py", SERVERS=servers, COPY_TO_REGIONS={"us-west-2": {}})
    assert run("ec2_to_ami.py", backup).returncode == 0
    dr = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint.url)
    vpc = dr.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = dr.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    groups = [dr.create_security_group(GroupName=n, Description=n, VpcId=vpc)["GroupId"]
              for n in ("web", "admin")]  # fmt: skip
    dr.create_key_pair(KeyName="ops-key")
    dr.create_placement_group(GroupName="kitchen-dr", Strategy="partition", PartitionCount=3)
    mapping = {fleet.subnet_id: subnet, "kitchen-pg": "kitchen-dr",
               **dict(zip(fleet.group_ids, groups, strict=True))}  # fmt: skip
    config = write_config(tmp_path / "r.py", SERVER="linux01", REGION="us-west-2",
                          REGION_MAP={"us-west-2": mapping})  # fmt: skip
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 0, result.stderr
    new_id = restored_id(result)
    new = dr.describe_instances(InstanceIds=[new_id])["Reservations"][0]["Instances"][0]
    nics = sorted(new["NetworkInterfaces"], key=lambda n: n["Attachment"]["DeviceIndex"])
    assert [n["SubnetId"] for n in nics] == [subnet, subnet]
    assert [sorted(g["GroupId"] for g in n["Groups"]) for n in nics] == [sorted(groups), groups[:1]]
    assert [len(n["PrivateIpAddresses"]) for n in nics] == [3, 1]
    assert [n["SourceDestCheck"] for n in nics] == [False, True]
    assert (new["Placement"]["GroupName"], new["Placement"]["PartitionNumber"]) == ("kitchen-dr", 2)
    assert result.stderr.count("is in us-east-1, so none is associated in us-west-2") == 2
    assert "target group arn:aws:elasticloadbalancing:us-east-1:" in result.stderr
    assert "Classic Load Balancers kitchen are in us-east-1" in result.stderr
    assert "no difference in" in result.stdout


def test_a_classic_load_balancer_that_is_gone_is_left_out_with_a_warning(
    ec2, clients, kitchen, tmp_path
):
    retire(ec2, kitchen.instances["win01"])
    clients["elb"].delete_load_balancer(LoadBalancerName="kitchen")
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="win01"))
    assert result.returncode == 0, result.stderr
    assert "Classic Load Balancer kitchen does not exist here" in result.stderr
    assert "Classic ELB kitchen" in result.stdout and "not reproducible" in result.stdout


def test_list_says_how_complete_each_backups_launch_record_is(ec2, kitchen, tmp_path, endpoint):
    [image] = managed(ec2, "win01")
    launch = [{"Key": t["Key"]} for t in image["Tags"] if t["Key"].startswith("ec2-to-ami:launch")]
    ec2.delete_tags(Resources=[image["ImageId"]], Tags=launch)
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py"), "--list")
    assert result.returncode == 0, result.stderr
    record = {line.split()[0]: line.split()[-2] for line in result.stdout.splitlines()[1:]}
    assert record == {"linux01": "full", "win01": "basic"}


def test_a_subnet_in_another_zone_for_a_two_interface_server_is_refused_before_launch(
    ec2, kitchen, tmp_path, endpoint
):
    retire(ec2, kitchen.instances["linux01"])
    [home] = ec2.describe_subnets(SubnetIds=[kitchen.subnet_id])["Subnets"]
    zone = next(z for z in ("a", "b") if f"{REGION}{z}" != home["AvailabilityZone"])
    other = ec2.create_subnet(VpcId=kitchen.vpc_id, CidrBlock="10.20.7.0/24",
                              AvailabilityZone=f"{REGION}{zone}")["Subnet"]  # fmt: skip
    config = write_config(tmp_path / "r.py", SERVER="linux01", SUBNET_ID=other["SubnetId"])
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 1
    assert "interfaces would be in different Availability Zones" in result.stderr
    assert "set NETWORK_INTERFACES" in result.stderr and "nothing launched" in result.stderr
    assert endpoint.count("RunInstances") == 2  # the kitchen's own two


def test_an_instance_type_that_cannot_take_the_recorded_cpu_settings_says_so(
    ec2, kitchen, tmp_path
):
    for server, new_type, attribute in (("linux01", "m5.large", "CPU credits 'unlimited'"),
                                        ("win01", "m5.2xlarge", "CPU options")):  # fmt: skip
        config = write_config(tmp_path / "r.py", SERVER=server, INSTANCE_TYPE=new_type)
        result = run("ami_to_ec2.py", config, "--dry-run")
        assert result.returncode == 0, result.stderr
        warning = next(line for line in result.stderr.splitlines() if attribute in line)
        assert "left out" in warning and new_type in warning
