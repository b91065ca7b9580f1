"""Benchmark: the restore's own overhead in API calls and wall time.

Backs up a server, terminates it, and restores it with ami_to_ec2.py from a
config holding only SERVER, against the local endpoint where instances are
running at once. What remains is the tool's overhead: its describe and check
calls, RunInstances, AssociateAddress, one status poll and the twin check. On
EC2 add the instance's boot: about a minute to running and a few more to
status-ok. The servers: web01 (one interface, one Elastic IP), and the
kitchen-sink Linux and Windows instances of tests/test_twin.py (two interfaces,
secondary IPs, two Elastic IPs, a placement group, a target group and a
Classic Load Balancer, ...).

    .venv/bin/python -m bench.restore_calls
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import boto3

from localaws.endpoint import SETTINGS, Endpoint
from localaws.fleet import (
    REGION,
    ROOT,
    add_elastic_ip,
    aws_env,
    build_network,
    kitchen_sink,
    launch,
    write_config,
)


def script(endpoint: Endpoint, name: str, config: Path, *args: str) -> tuple[float, Counter]:
    """Run a script; return its wall time and its successful calls by action."""
    start, started = len(endpoint.calls), time.monotonic()
    command = [sys.executable, str(ROOT / name), "--config", str(config), "-q", *args]
    result = subprocess.run(
        command, env={**os.environ, **aws_env(endpoint.url)}, capture_output=True
    )
    if result.returncode:
        raise SystemExit(result.stderr.decode())
    wall = time.monotonic() - started
    return wall, Counter(c.action for c in endpoint.calls[start:] if c.status < 400)


def main() -> int:
    endpoint = Endpoint().start()
    SETTINGS.pending_seconds = 0.0
    make = lambda service: boto3.client(  # noqa: E731
        service, region_name=REGION, endpoint_url=endpoint.url, **keys()
    )
    ec2 = make("ec2")
    fleet = build_network(ec2, make("iam"))
    launch(ec2, fleet, "web01")
    add_elastic_ip(ec2, fleet, "web01")
    kitchen_sink(ec2, make("elbv2"), make("elb"), fleet, "linux01")
    kitchen_sink(ec2, make("elbv2"), make("elb"), fleet, "win01", windows=True)
    print("| server | WAIT | wall s | calls | by action |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        runs = [("web01", "running"), ("web01", "status-ok"), ("linux01", "status-ok"),
                ("win01", "status-ok")]  # fmt: skip
        for server, wait in runs:
            backup = write_config(Path(workdir) / "b.py", SELECT_TAGS={"Name": server})
            script(endpoint, "ec2_to_ami.py", backup)
            retire(ec2, current(ec2, server))
            config = write_config(Path(workdir) / "r.py", SERVER=server, WAIT=wait)
            wall, calls = script(endpoint, "ami_to_ec2.py", config)
            detail = ", ".join(f"{a} {n}" for a, n in sorted(calls.items()))
            print(f"| {server} | {wait} | {wall:.2f} | {sum(calls.values())} | {detail} |")
    endpoint.stop()
    return 0


def retire(ec2, instance_id: str) -> None:
    """Terminate an instance, lifting its protections first."""
    for attribute in ("DisableApiTermination", "DisableApiStop"):
        ec2.modify_instance_attribute(InstanceId=instance_id, **{attribute: {"Value": False}})
    ec2.terminate_instances(InstanceIds=[instance_id])


def keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def current(ec2, server: str) -> str:
    """The live instance named as the server."""
    filters = [{"Name": "tag:Name", "Values": [server]},
               {"Name": "instance-state-name", "Values": ["running"]}]  # fmt: skip
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return reservations[0]["Instances"][0]["InstanceId"]


if __name__ == "__main__":
    sys.exit(main())
