"""A small fleet on the local endpoint, and the settings that point boto3 at it.

Shared by the tests, the benchmarks and the demo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaws.endpoint import LINUX_AMI, WINDOWS_AMI

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


def aws_env(url: str) -> dict[str, str]:
    """Environment that points boto3 at the local endpoint with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@dataclass
class Fleet:
    """What the fleet fixture built, by name."""

    vpc_id: str
    subnet_id: str
    group_ids: list[str]
    key_name: str
    profile_arn: str
    instances: dict[str, str] = field(default_factory=dict)  # server name -> instance id
    eips: dict[str, str] = field(default_factory=dict)  # server name -> allocation id


def launch(ec2: Any, fleet: Fleet, name: str, ami: str = LINUX_AMI, **extra: Any) -> str:
    """Launch one instance into the fleet's subnet; return its id."""
    tags = [{"Key": "Name", "Value": name}, *extra.pop("tags", [])]
    params = {
        "ImageId": ami,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": "t3.small",
        "SubnetId": fleet.subnet_id,
        "SecurityGroupIds": fleet.group_ids,
        "KeyName": fleet.key_name,
        "IamInstanceProfile": {"Arn": fleet.profile_arn},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        **extra,
    }
    instance_id = ec2.run_instances(**params)["Instances"][0]["InstanceId"]
    fleet.instances[name] = instance_id
    return instance_id


def build_network(ec2: Any, iam: Any, cidr: str = "10.20.1.0/24") -> Fleet:
    """A VPC, subnet, two security groups, a key pair and an instance profile."""
    vpc_id = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr)["Subnet"]["SubnetId"]
    group_ids = [
        ec2.create_security_group(GroupName=n, Description=n, VpcId=vpc_id)["GroupId"]
        for n in ("web", "admin")
    ]
    ec2.create_key_pair(KeyName="ops-key")
    iam.create_role(RoleName="app-role", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName="app-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="app-profile", RoleName="app-role")
    arn = profile["InstanceProfile"]["Arn"]
    return Fleet(vpc_id, subnet_id, group_ids, "ops-key", arn)


def add_elastic_ip(ec2: Any, fleet: Fleet, name: str) -> str:
    """Allocate an Elastic IP and associate it with a fleet instance."""
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=allocation, InstanceId=fleet.instances[name])
    fleet.eips[name] = allocation
    return allocation


def write_config(path: Path, **settings: Any) -> Path:
    """Write a config module of UPPER_CASE settings."""
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def kitchen_sink(
    ec2: Any, elbv2: Any, elb: Any, fleet: Fleet, name: str, windows: bool = False
) -> str:
    """An instance with every attribute a restore reproduces set away from EC2's default:
    Linux has two interfaces (secondary IPs, source/dest check off), Elastic IPs on its
    primary and a secondary address, a partition placement group, unlimited CPU credits,
    hibernation and every protection, on a T2 (no CPU options, no EBS optimization);
    Windows has dedicated tenancy, CPU options, EBS optimization, Nitro Enclaves, a public
    IP from launch and an Elastic IP on a secondary address. Both are
    in a target group (on a port of their own) and a Classic Load Balancer."""
    if "kitchen-pg" not in [
        g["GroupName"] for g in ec2.describe_placement_groups()["PlacementGroups"]
    ]:
        ec2.create_placement_group(GroupName="kitchen-pg", Strategy="partition", PartitionCount=3)
    groups = elbv2.describe_target_groups()["TargetGroups"]
    group = (
        next((g for g in groups if g["TargetGroupName"] == "kitchen"), None)
        or (
            elbv2.create_target_group(
                Name="kitchen", Protocol="HTTP", Port=80, VpcId=fleet.vpc_id, TargetType="instance"
            )["TargetGroups"][0]
        )
    )
    if "kitchen" not in [
        b["LoadBalancerName"] for b in elb.describe_load_balancers()["LoadBalancerDescriptions"]
    ]:
        elb.create_load_balancer(LoadBalancerName="kitchen", Subnets=[fleet.subnet_id],
                                 Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80,
                                             "InstancePort": 80}])  # fmt: skip
    common = {
        "KeyName": fleet.key_name,
        "IamInstanceProfile": {"Arn": fleet.profile_arn},
        "Monitoring": {"Enabled": True},
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2,
                            "HttpEndpoint": "enabled", "HttpProtocolIpv6": "enabled",
                            "InstanceMetadataTags": "enabled"},
        "PrivateDnsNameOptions": {"HostnameType": "resource-name",
                                  "EnableResourceNameDnsARecord": True,
                                  "EnableResourceNameDnsAAAARecord": False},
        "MaintenanceOptions": {"AutoRecovery": "disabled"},
        "DisableApiStop": True,
        "DisableApiTermination": True,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "CapacityReservationSpecification": {"CapacityReservationPreference": "none"},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [
            {"Key": "Name", "Value": name}, {"Key": "Env", "Value": "prod"}]}],
    }  # fmt: skip
    primary = {"DeviceIndex": 0, "SubnetId": fleet.subnet_id, "Groups": fleet.group_ids,
               "Description": f"{name} front", "DeleteOnTermination": True}  # fmt: skip
    if windows:
        params = {
            **common, "ImageId": WINDOWS_AMI, "InstanceType": "m5.xlarge", "EbsOptimized": True,
            "Placement": {"Tenancy": "dedicated"},
            "CpuOptions": {"CoreCount": 2, "ThreadsPerCore": 1},
            "EnclaveOptions": {"Enabled": True},
            "NetworkInterfaces": [{**primary, "SecondaryPrivateIpAddressCount": 1,
                                   "AssociatePublicIpAddress": True}],
        }  # fmt: skip
    else:
        params = {
            **common, "ImageId": LINUX_AMI, "InstanceType": "t2.medium",
            "Placement": {"GroupName": "kitchen-pg", "PartitionNumber": 2},
            "CreditSpecification": {"CpuCredits": "unlimited"},
            "HibernationOptions": {"Configured": True},
            "NetworkInterfaces": [
                {**primary, "SecondaryPrivateIpAddressCount": 2},
                {"DeviceIndex": 1, "SubnetId": fleet.subnet_id, "Groups": fleet.group_ids[:1],
                 "Description": f"{name} back", "DeleteOnTermination": False},
            ],
        }  # fmt: skip
    instance = ec2.run_instances(MinCount=1, MaxCount=1, **params)["Instances"][0]
    instance_id = instance["InstanceId"]
    fleet.instances[name] = instance_id
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    nics = sorted(described["NetworkInterfaces"], key=lambda n: n["Attachment"]["DeviceIndex"])
    front = nics[0]
    secondary = [a["PrivateIpAddress"] for a in front["PrivateIpAddresses"] if not a["Primary"]]
    if not windows:
        ec2.modify_network_interface_attribute(
            NetworkInterfaceId=front["NetworkInterfaceId"], SourceDestCheck={"Value": False}
        )
        allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
        ec2.associate_address(AllocationId=allocation, InstanceId=instance_id)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=front["NetworkInterfaceId"],
                          PrivateIpAddress=secondary[0])  # fmt: skip
    port = 8443 if windows else 8080
    elbv2.register_targets(TargetGroupArn=group["TargetGroupArn"],
                           Targets=[{"Id": instance_id, "Port": port}])  # fmt: skip
    elb.register_instances_with_load_balancer(
        LoadBalancerName="kitchen", Instances=[{"InstanceId": instance_id}]
    )
    return instance_id


def drill_network(ec2: Any, fleet: Fleet, cidr: str = "10.20.9.0/24") -> tuple[str, str]:
    """An isolated subnet and security group for restore drills, in the fleet's VPC."""
    subnet_id = ec2.create_subnet(VpcId=fleet.vpc_id, CidrBlock=cidr)["Subnet"]["SubnetId"]
    group_id = ec2.create_security_group(
        GroupName="drill", Description="restore drills: no inbound", VpcId=fleet.vpc_id
    )["GroupId"]
    return subnet_id, group_id
