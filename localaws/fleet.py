"""A small fleet on the local endpoint, and the settings that point boto3 at it.

Shared by the tests, the benchmarks and the demo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaws.endpoint import LINUX_AMI

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
