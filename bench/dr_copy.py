"""Benchmark: disaster recovery, copying backups to another region and restoring there.

For each N: a fleet of N servers backed up with COPY_TO_REGIONS (KEEP=1 in both
regions) against the local endpoint with EC2's request token buckets emulated.
Images pend for 0.5 s; a copy pends for COPY_SECONDS, which stands in for
EC2's copy time (see docs/dr.md: on EC2 that time depends on the data). A
first run and a steady-state run (N creates, N copies, N deregistrations in
each region) report wall time, the part of it after the last backup was
verified (the copy wait), calls by region, polls of the DR region, refused
calls and the exit code. Then the source region is lost (every instance
terminated, every image there deregistered) and one server is restored in the
DR region with its own subnet and groups: wall time and calls.

    .venv/bin/python -m bench.dr_copy 10 100 200
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from bench import KEYS, launch_servers, print_table
from localaws.endpoint import SETTINGS, Endpoint
from localaws.fleet import REGION, ROOT, aws_env, write_config

DR = "us-west-2"
COPY_SECONDS = 5.0


def run_script(endpoint: Endpoint, name: str, config: Path, *args: str) -> dict:
    """Run one script; return its wall time, calls and exit code."""
    start, started = len(endpoint.calls), time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / name), "--config", str(config), *args],
        env={**os.environ, **aws_env(endpoint.url)}, capture_output=True, text=True,
    )  # fmt: skip
    calls = endpoint.calls[start:]
    ok = [c for c in calls if c.status < 400]
    return {
        "wall": time.monotonic() - started,
        "source": sum(c.region == REGION for c in ok),
        "dr": sum(c.region == DR for c in ok),
        "copies": sum(c.action == "CopyImage" for c in ok),
        "dr_polls": sum(c.action == "DescribeImages" and c.region == DR for c in ok),
        "refused": sum(c.status == 503 for c in calls),
        "exit": result.returncode,
        "stderr": result.stderr,
    }


def bench(endpoint: Endpoint, count: int, workdir: Path) -> list[str]:
    endpoint.reset()
    SETTINGS.pending_seconds, SETTINGS.copy_pending_seconds = 0.5, COPY_SECONDS
    servers = launch_servers(endpoint, count)
    config = write_config(workdir / f"dr{count}.py", SERVERS=servers, KEEP=1,
                          COPY_TO_REGIONS={DR: {"keep": 1}})  # fmt: skip
    rows = []
    for label in ("first", "steady"):
        endpoint.throttle()
        r = run_script(endpoint, "ec2_to_ami.py", config)
        endpoint.throttle(False)
        cells = [count, label, f"{r['wall']:.1f}", r["copies"], r["source"], r["dr"],
                 r["dr_polls"], r["refused"], r["exit"]]  # fmt: skip
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    rows.append(restore_row(endpoint, count, workdir))
    return rows


def restore_row(endpoint: Endpoint, count: int, workdir: Path) -> str:
    """Lose the source region, then restore one server in the DR region."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url, **KEYS)
    dr = boto3.client("ec2", region_name=DR, endpoint_url=endpoint.url, **KEYS)
    ids = [
        i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    ]
    ec2.terminate_instances(InstanceIds=ids)
    for image in ec2.describe_images(Owners=["self"])["Images"]:
        ec2.deregister_image(ImageId=image["ImageId"])
    vpc = dr.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = dr.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    group = dr.create_security_group(GroupName="dr", Description="dr", VpcId=vpc)["GroupId"]
    dr.create_key_pair(KeyName="ops-key")
    config = write_config(workdir / f"restore{count}.py", SERVER="srv0000", REGION=DR,
                          SUBNET_ID=subnet, SECURITY_GROUP_IDS=[group])  # fmt: skip
    r = run_script(endpoint, "ami_to_ec2.py", config)
    cells = [count, "DR restore", f"{r['wall']:.1f}", "-", r["source"], r["dr"], "-",
             r["refused"], r["exit"]]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [10, 100, 200]
    header = ["N", "run", "wall s", "CopyImage", "calls in source", "calls in DR",
              "DR polls", "throttled", "exit"]  # fmt: skip
    print_table(header, counts, bench)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
