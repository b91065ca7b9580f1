"""Benchmark: the restore's own overhead in API calls and wall time.

Backs up one server, terminates it, and restores it with ami_to_ec2.py from a
config holding only SERVER, against the local endpoint where instances are
running at once. What remains is the tool's overhead: its describe and check
calls, RunInstances, AssociateAddress and one status poll. On EC2 add the
instance's boot: about a minute to running and a few more to status-ok.

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
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url, **keys())
    iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint.url, **keys())
    fleet = build_network(ec2, iam)
    launch(ec2, fleet, "web01")
    add_elastic_ip(ec2, fleet, "web01")
    print("| WAIT | wall s | calls | by action |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        backup = write_config(Path(workdir) / "b.py", SELECT_TAGS={"Name": "web01"})
        for wait in ("running", "status-ok"):
            script(endpoint, "ec2_to_ami.py", backup)
            ec2.terminate_instances(InstanceIds=[current(ec2)])
            config = write_config(Path(workdir) / "r.py", SERVER="web01", WAIT=wait)
            wall, calls = script(endpoint, "ami_to_ec2.py", config)
            detail = ", ".join(f"{a} {n}" for a, n in sorted(calls.items()))
            print(f"| {wait} | {wall:.2f} | {sum(calls.values())} | {detail} |")
    endpoint.stop()
    return 0


def keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def current(ec2) -> str:
    """The live instance named web01."""
    filters = [{"Name": "tag:Name", "Values": ["web01"]},
               {"Name": "instance-state-name", "Values": ["running"]}]  # fmt: skip
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return reservations[0]["Instances"][0]["InstanceId"]


if __name__ == "__main__":
    sys.exit(main())
