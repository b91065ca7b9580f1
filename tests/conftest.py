"""Fixtures: the patched local EC2 endpoint, a small fleet on it, and script runners."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.harness import LINUX_AMI, SETTINGS, WINDOWS_AMI, Endpoint

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


@pytest.fixture(scope="session")
def endpoint_server() -> Endpoint:
    server = Endpoint().start()
    yield server
    server.stop()


@pytest.fixture
def endpoint(endpoint_server: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """A clean endpoint for each test; images settle after half a second."""
    endpoint_server.reset()
    SETTINGS.pending_seconds = 0.5
    for key, value in aws_env(endpoint_server.url).items():
        monkeypatch.setenv(key, value)
    return endpoint_server


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


@pytest.fixture
def ec2(endpoint: Endpoint) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url)


@pytest.fixture
def iam(endpoint: Endpoint) -> Any:
    return boto3.client("iam", region_name=REGION, endpoint_url=endpoint.url)


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


@pytest.fixture
def fleet(ec2: Any, iam: Any) -> Fleet:
    """web01 and app01 (Linux, listed by id), win01 (Windows, found by its Backup tag)."""
    fleet = build_network(ec2, iam)
    launch(ec2, fleet, "web01", tags=[{"Key": "Env", "Value": "prod"}])
    launch(ec2, fleet, "app01")
    launch(ec2, fleet, "win01", WINDOWS_AMI, tags=[{"Key": "Backup", "Value": "yes"}])
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=allocation, InstanceId=fleet.instances["web01"])
    fleet.eips["web01"] = allocation
    return fleet


def write_config(path: Path, **settings: Any) -> Path:
    """Write a config module of UPPER_CASE settings."""
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def backup_config(tmp_path: Path, fleet: Fleet, name: str = "backup.py", **overrides: Any) -> Path:
    """The standard test config: web01 and app01 by id, win01 by SELECT_TAGS."""
    settings = {
        "SERVERS": [
            {"name": "web01", "instance_id": fleet.instances["web01"]},
            {"name": "app01", "instance_id": fleet.instances["app01"]},
        ],
        "SELECT_TAGS": {"Backup": "yes"},
        "KEEP": 2,
        "WAIT_TIMEOUT_MINUTES": 1,
        **overrides,
    }
    return write_config(tmp_path / name, **settings)


def script_command(script: str, config: Path | None, *args: str) -> list[str]:
    command = [sys.executable, str(ROOT / script)]
    if config is not None:
        command += ["--config", str(config)]
    return command + list(args)


def run(script: str, config: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run a script the way cron or a person does: a subprocess with a config file."""
    return subprocess.run(
        script_command(script, config, *args),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def managed(ec2: Any, server: str | None = None) -> list[dict]:
    """Managed images (of one server), as DescribeImages reports them."""
    filters = [{"Name": "tag:ec2-to-ami:managed-by", "Values": ["ec2-to-ami"]}]
    if server:
        filters.append({"Name": "tag:ec2-to-ami:server", "Values": [server]})
    return ec2.describe_images(Owners=["self"], Filters=filters)["Images"]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}
