"""Launch requests EC2 would accept (issue 31): every RunInstances a restore or a drill
sends passes the endpoint's rules (P38, built from the instance types' own data), or the
restore refuses before any launch with a message that names the attribute; the dry run
shows the same drops and refusals."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from localaws.endpoint import SETTINGS
from localaws.fleet import LINUX_AMI, REGION, build_network, drill_network, kitchen_sink
from tests.conftest import run, write_config

DR = "us-west-2"


@pytest.fixture
def kitchen(ec2, iam, endpoint, tmp_path):
    """linux01 (a T2: two interfaces, three addresses on eth0, a partition group, hibernation)
    and win01 (an m5: CPU options, EBS optimization, Nitro Enclaves, dedicated tenancy, a
    public IP), backed up once; a drill network."""
    make = lambda service: boto3.client(service, region_name=REGION, endpoint_url=endpoint.url)  # noqa: E731
    fleet = build_network(ec2, iam)
    for name in ("linux01", "win01"):
        kitchen_sink(ec2, make("elbv2"), make("elb"), fleet, name, windows=name == "win01")
    fleet.servers = [{"name": n, "instance_id": i} for n, i in fleet.instances.items()]
    config = write_config(tmp_path / "backup.py", SERVERS=fleet.servers)
    assert run("ec2_to_ami.py", config).returncode == 0
    fleet.drill_subnet, fleet.drill_group = drill_network(ec2, fleet)
    SETTINGS.instance_pending_seconds = 0.1
    return fleet


def restore(tmp_path, endpoint, *args: str, **settings) -> tuple:
    """The dry run, then the run: (dry run, run, RunInstances refused by the endpoint)."""
    config = write_config(
        tmp_path / "r.py", WAIT="running", TERMINATION_PROTECTION=False, **settings
    )
    dry = run("ami_to_ec2.py", config, "--dry-run", *args)
    before = endpoint.count("RunInstances", ok=False)
    real = run("ami_to_ec2.py", config, *args)
    return dry, real, endpoint.count("RunInstances", ok=False) - before


def left_out(stderr: str) -> list[str]:
    return sorted(
        line.split("WARNING", 1)[-1] for line in stderr.splitlines() if "left out" in line
    )


MATRIX = [
    # (server, settings, what the restore must leave out, by name)
    ("linux01", {}, []),  # a T2: its CPU options are the type's defaults, so none are sent
    ("win01", {}, []),
    ("linux01", {"COUNT": 2}, []),
    ("win01", {"INSTANCE_TYPE": "t2.medium"},
     ["CPU options", "EBS-optimized", "Nitro Enclaves"]),
    ("win01", {"INSTANCE_TYPE": "t3.micro"}, ["CPU options", "Nitro Enclaves"]),
    ("linux01", {"INSTANCE_TYPE": "m5.large"}, ["CPU credits"]),
    ("win01", {"INSTANCE_TYPE": "m5.metal"}, ["CPU options", "Nitro Enclaves"]),
    ("linux01", {"PLACEMENT_GROUP": False}, []),  # its partition goes with the group
]  # fmt: skip


def test_every_launch_of_the_matrix_is_one_ec2_accepts(ec2, kitchen, tmp_path, endpoint):
    for server, settings, dropped in MATRIX:
        dry, real, refused = restore(tmp_path, endpoint, SERVER=server, NAME=f"{server}-t",
                                     **settings)  # fmt: skip
        case = f"{server} {settings}"
        assert (dry.returncode, real.returncode, refused) == (0, 0, 0), (case, real.stderr)
        assert [name for name in dropped if not any(name in w for w in left_out(real.stderr))] == []
        assert left_out(dry.stderr) == left_out(real.stderr), case
        for new in launched(ec2, f"{server}-t*"):
            ec2.terminate_instances(InstanceIds=[new["InstanceId"]])


def test_a_type_that_cannot_hold_the_servers_network_is_refused_before_launch(
    kitchen, tmp_path, endpoint
):
    launches = endpoint.count("RunInstances")
    dry, real, _ = restore(tmp_path, endpoint, SERVER="linux01", INSTANCE_TYPE="t3.micro")
    for result in (dry, real):
        assert result.returncode == 1
        assert "instance type t3.micro cannot hold the server's network" in result.stderr
        assert "3 private IPv4 addresses on interface 0 (it takes 2)" in result.stderr
    assert endpoint.count("RunInstances") == launches


DRILLS = [  # (server, DRILL_INSTANCE_TYPE): each drill's launch is one EC2 accepts
    ("linux01", None), ("win01", None), ("linux01", "m5.large"), ("win01", "t2.medium"),
    ("win01", "t3.micro"), ("linux01", "t2.medium"), ("win01", "m5.metal"),
]  # fmt: skip


def test_every_drill_of_the_matrix_is_a_launch_ec2_accepts(kitchen, tmp_path, endpoint):
    for server, instance_type in DRILLS:
        config = write_config(tmp_path / "drill.py", DRILL_SUBNET_ID=kitchen.drill_subnet,
                              DRILL_SECURITY_GROUP_IDS=[kitchen.drill_group],
                              DRILL_INSTANCE_TYPE=instance_type)  # fmt: skip
        result = run("ami_to_ec2.py", config, "--drill", "--server", server)
        case = f"{server} on {instance_type}"
        assert result.returncode == 0, (case, result.stderr)
    assert endpoint.count("RunInstances", ok=False) == 0


def test_a_drill_on_another_type_fits_it_or_refuses(kitchen, tmp_path, endpoint):
    config = write_config(tmp_path / "drill.py", DRILL_SUBNET_ID=kitchen.drill_subnet,
                          DRILL_SECURITY_GROUP_IDS=[kitchen.drill_group],
                          DRILL_INSTANCE_TYPE="m5.metal")  # fmt: skip
    result = run("ami_to_ec2.py", config, "--drill", "--server", "win01")
    assert result.returncode == 0, result.stderr
    assert endpoint.count("RunInstances", ok=False) == 0
    assert any("CPU options" in line for line in left_out(result.stderr))
    config = write_config(tmp_path / "drill.py", DRILL_SUBNET_ID=kitchen.drill_subnet,
                          DRILL_SECURITY_GROUP_IDS=[kitchen.drill_group],
                          DRILL_INSTANCE_TYPE="t3.micro")  # fmt: skip
    result = run("ami_to_ec2.py", config, "--drill", "--server", "linux01")
    assert result.returncode == 1 and "cannot hold the server's network" in result.stderr


def test_no_public_ip_means_none_even_in_a_subnet_that_maps_them(ec2, kitchen, tmp_path, endpoint):
    zone = ec2.describe_instances(InstanceIds=[kitchen.instances["win01"]])["Reservations"][0][
        "Instances"][0]["Placement"]["AvailabilityZone"]  # fmt: skip
    subnet = ec2.create_subnet(VpcId=kitchen.vpc_id, CidrBlock="10.20.6.0/24",
                               AvailabilityZone=zone)["Subnet"]["SubnetId"]  # fmt: skip
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    _, real, refused = restore(tmp_path, endpoint, SERVER="win01", NAME="win01-t",
                               SUBNET_ID=subnet, PUBLIC_IP=False, ELASTIC_IP=None)  # fmt: skip
    assert (real.returncode, refused) == (0, 0), real.stderr
    [new] = launched(ec2, "win01-t")
    assert "PublicIpAddress" not in new


def test_a_dr_restore_leaves_the_partition_out_with_its_group(ec2, kitchen, tmp_path, endpoint):
    copies = write_config(tmp_path / "copies.py", SERVERS=kitchen.servers[:1],
                          COPY_TO_REGIONS={DR: {"keep": 1, "kms_key_id": None}})  # fmt: skip
    SETTINGS.copy_pending_seconds = 0.05
    assert run("ec2_to_ami.py", copies).returncode == 0
    dr = boto3.client("ec2", region_name=DR, endpoint_url=endpoint.url)
    vpc = dr.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = dr.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    group = dr.create_security_group(GroupName="dr", Description="dr", VpcId=vpc)["GroupId"]
    dr.create_key_pair(KeyName=kitchen.key_name)
    interfaces = [{"subnet_id": subnet, "security_group_ids": [group]}] * 2
    dry, real, refused = restore(tmp_path, endpoint, SERVER="linux01", REGION=DR,
                                 NETWORK_INTERFACES=interfaces)  # fmt: skip
    assert (dry.returncode, real.returncode, refused) == (0, 0, 0), real.stderr
    assert "placement group kitchen-pg is in us-east-1: left out" in real.stderr
    [new] = launched(dr, "linux01")
    assert not new["Placement"].get("GroupName") and "PartitionNumber" not in new["Placement"]


def test_user_data_over_16_kb_is_refused_with_its_size(kitchen, tmp_path, endpoint):
    script = tmp_path / "setup.sh"
    script.write_text("#!/bin/sh\n" + "#" * 16300 + "\n")
    launches = endpoint.count("RunInstances")
    _, real, _ = restore(tmp_path, endpoint, SERVER="linux01", HOSTNAME="web01",
                         USER_DATA=f"@{script}")  # fmt: skip
    assert real.returncode == 1 and "HOSTNAME's script; EC2 takes at most 16384" in real.stderr
    script.write_text("#" * 17000)
    _, real, _ = restore(tmp_path, endpoint, SERVER="linux01", USER_DATA=f"@{script}")
    assert real.returncode == 2 and "USER_DATA is 17000 bytes" in real.stderr
    assert endpoint.count("RunInstances") == launches


def launched(ec2, name: str) -> list[dict]:
    filters = [{"Name": "tag:Name", "Values": [name]},
               {"Name": "instance-state-name", "Values": ["pending", "running"]}]  # fmt: skip
    answer = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i for r in answer for i in r["Instances"]]


# --- The endpoint refuses what EC2 refuses (P38) ------------------------------------------

REFUSED = [
    ("CPU options on a T2", {"InstanceType": "t2.micro",
                             "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 1}},
     "InvalidParameterCombination"),
    ("cores outside ValidCores", {"InstanceType": "m5.xlarge",
                                  "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 1}},
     "InvalidParameterValue"),
    ("three interfaces on a t3.micro", {"InstanceType": "t3.micro", "interfaces": 3},
     "AttachmentLimitExceeded"),
    ("three addresses on a t3.micro", {"InstanceType": "t3.micro", "secondary": 2},
     "InvalidInterface.IpAddressLimitExceeded"),
    ("EBS optimization on a T2", {"InstanceType": "t2.micro", "EbsOptimized": True},
     "InvalidParameterCombination"),
    ("hibernation on a metal type", {"InstanceType": "m5.metal",
                                     "HibernationOptions": {"Configured": True}},
     "UnsupportedHibernationConfiguration"),
    ("enclaves on an m5.large", {"InstanceType": "m5.large", "EnclaveOptions": {"Enabled": True}},
     "InvalidParameterCombination"),
    ("a partition without its group", {"Placement": {"PartitionNumber": 1}},
     "InvalidParameterCombination"),
    ("affinity without host tenancy", {"Placement": {"Affinity": "host"}},
     "InvalidParameterCombination"),
    ("user data over 16 KB", {"UserData": "#" * 16385}, "InvalidParameterValue"),
    ("a public IP off eth0", {"interfaces": 2, "public_on": 1}, "InvalidParameterCombination"),
    ("interfaces in two zones", {"interfaces": 2, "zones": 2}, "InvalidParameterValue"),
]  # fmt: skip


def test_p38_the_endpoint_refuses_what_ec2_refuses(ec2, fleet):
    home = ec2.describe_subnets(SubnetIds=[fleet.subnet_id])["Subnets"][0]["AvailabilityZone"]
    zone = next(f"{REGION}{z}" for z in "ab" if f"{REGION}{z}" != home)
    other = ec2.create_subnet(VpcId=fleet.vpc_id, CidrBlock="10.20.8.0/24",
                              AvailabilityZone=zone)["Subnet"]["SubnetId"]  # fmt: skip
    for case, asked, code in REFUSED:
        assert refusal(ec2, fleet, other, asked) == code, case


def refusal(ec2, fleet, other: str, asked: dict) -> str:
    """The error code of RunInstances with asked; the same request, fitted, must launch."""
    asked = dict(asked)
    count, secondary = asked.pop("interfaces", 1), asked.pop("secondary", 0)
    public_on, zones = asked.pop("public_on", None), asked.pop("zones", 1)
    subnets = [fleet.subnet_id, other][:zones]
    nics = [{"DeviceIndex": i, "SubnetId": subnets[min(i, len(subnets) - 1)]} for i in range(count)]
    nics[0]["SecondaryPrivateIpAddressCount"] = secondary
    if public_on is not None:
        nics[public_on]["AssociatePublicIpAddress"] = False
    request = {"ImageId": LINUX_AMI, "MinCount": 1, "MaxCount": 1,
               "InstanceType": "m5.large", "NetworkInterfaces": nics, **asked}  # fmt: skip
    with pytest.raises(ClientError) as err:
        ec2.run_instances(**request)
    del request["ImageId"]
    fits = {k: v for k, v in request.items() if k in ("MinCount", "MaxCount", "InstanceType")}
    nic = {"DeviceIndex": 0, "SubnetId": fleet.subnet_id}
    ec2.run_instances(ImageId=LINUX_AMI, NetworkInterfaces=[nic], **fits)  # the same, fitted
    return str(err.value.response["Error"]["Code"])
