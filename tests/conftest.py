"""Fixtures: the patched local EC2 endpoint, a small fleet on it, and script runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.fleet import (
    REGION,
    ROOT,
    Fleet,
    add_elastic_ip,
    aws_env,
    build_network,
    launch,
    write_config,
)
from tests.harness import SETTINGS, WINDOWS_AMI, Endpoint


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


@pytest.fixture
def ec2(endpoint: Endpoint) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url)


@pytest.fixture
def iam(endpoint: Endpoint) -> Any:
    return boto3.client("iam", region_name=REGION, endpoint_url=endpoint.url)


@pytest.fixture
def fleet(ec2: Any, iam: Any) -> Fleet:
    """web01 and app01 (Linux, listed by id), win01 (Windows, found by its Backup tag)."""
    fleet = build_network(ec2, iam)
    launch(ec2, fleet, "web01", tags=[{"Key": "Env", "Value": "prod"}])
    launch(ec2, fleet, "app01")
    launch(ec2, fleet, "win01", WINDOWS_AMI, tags=[{"Key": "Backup", "Value": "yes"}])
    add_elastic_ip(ec2, fleet, "web01")
    return fleet


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
