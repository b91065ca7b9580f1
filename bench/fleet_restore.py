"""Benchmark: ami_to_ec2.py --all restoring N servers at EC2's throttling limits.

Each server has one backup and an Elastic IP, and its original is terminated (a
lost zone). The local endpoint emulates EC2's request token buckets (RunInstances:
5, then 2 a second; mutating calls: 50, then 5 a second), and each new instance
is pending for BOOT_SECONDS before it runs and passes its status checks.

The floor is what EC2 itself allows: the RunInstances beyond the burst at 2 a second,
plus one instance's boot. The table gives the wall time against it, the calls EC2
refused, the servers that failed, and the calls by kind: those made once per
server (RunInstances, AssociateAddress, and the twin check's GetLaunchTemplateData,
which has no batch form), the polls (one DescribeInstances and one
DescribeInstanceStatus per poll for the whole fleet), and everything else.

    .venv/bin/python -m bench.fleet_restore 10 50 200
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3

from bench import KEYS, launch_servers, print_table
from ec2ami.facts import request_bucket
from localaws.endpoint import SETTINGS, Endpoint
from localaws.fleet import REGION, ROOT, aws_env, write_config

BOOT_SECONDS = 3.0
PER_SERVER = ("RunInstances", "AssociateAddress", "GetLaunchTemplateData")
POLLS = ("DescribeInstances", "DescribeInstanceStatus")


def floor(count: int) -> float:
    """The least time EC2 allows: RunInstances beyond the burst, then one boot."""
    size, rate = request_bucket("RunInstances")
    return max(0, count - size) / rate + BOOT_SECONDS


def prepare(endpoint: Endpoint, count: int, workdir: Path) -> Path:
    """Back up count servers, each with an Elastic IP, then terminate them all."""
    endpoint.reset()
    SETTINGS.pending_seconds = 0.0
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url, **KEYS)
    servers = launch_servers(endpoint, count)
    for server in servers:
        allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
        ec2.associate_address(AllocationId=allocation, InstanceId=server["instance_id"])
    backup = write_config(workdir / f"backup{count}.py", SERVERS=servers, KEEP=1)
    script(endpoint, "ec2_to_ami.py", backup)
    ids = [s["instance_id"] for s in servers]
    for start in range(0, len(ids), 200):
        ec2.terminate_instances(InstanceIds=ids[start : start + 200])
    return write_config(workdir / f"restore{count}.py")


def script(endpoint: Endpoint, name: str, config: Path, *args: str) -> str:
    """Run a script as cron or a person does; return its stdout."""
    result = subprocess.run(
        [sys.executable, str(ROOT / name), "--config", str(config), "-q", *args],
        env={**os.environ, **aws_env(endpoint.url)}, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"{name} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def bench(endpoint: Endpoint, count: int, workdir: Path) -> list[str]:
    config = prepare(endpoint, count, workdir)
    SETTINGS.instance_pending_seconds = BOOT_SECONDS
    endpoint.throttle()
    start, started = len(endpoint.calls), time.monotonic()
    report = json.loads(script(endpoint, "ami_to_ec2.py", config, "--all", "--json"))
    wall = time.monotonic() - started
    endpoint.throttle(False)
    calls = endpoint.calls[start:]
    made = Counter(c.action for c in calls if c.status < 400)
    per_server = sum(made[a] for a in PER_SERVER)
    polls = sum(made[a] for a in POLLS)
    other = sum(made.values()) - per_server - polls
    cells = [
        count, f"{wall:.1f}", f"{floor(count):.1f}", f"{wall / floor(count):.2f}",
        sum(c.status == 503 for c in calls), len(report["failed"]),
        " + ".join(str(made[a]) for a in PER_SERVER), polls, other,
    ]  # fmt: skip
    return ["| " + " | ".join(str(c) for c in cells) + " |"]


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [10, 50, 200]
    header = ["N", "wall s", "floor s", "ratio", "throttled", "failed servers",
              "RunInstances + AssociateAddress + GetLaunchTemplateData", "polls",
              "other calls"]  # fmt: skip
    print_table(header, counts, bench)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
