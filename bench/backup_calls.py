"""Benchmark: API calls per operation and wall time of ec2_to_ami.py over N servers.

Runs the real script as a subprocess against the patched local endpoint (no
throttling; images stay pending for half a second). For each N it times a
first run (nothing to prune) and a steady-state run (KEEP=1: one CreateImage
and one DeregisterImage per server), and prints a Markdown table.

    make bench            # or: .venv/bin/python -m bench.backup_calls 10 100
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3

from bench import budget, print_table
from localaws.endpoint import LINUX_AMI, SETTINGS, Endpoint
from localaws.fleet import ROOT, aws_env, build_network, write_config

COLUMNS = ["CreateImage", "DeregisterImage", "DescribeImages", "DescribeSnapshots",
           "DescribeInstances", "DescribeAddresses", "GetLaunchTemplateData"]  # fmt: skip


def make_servers(ec2, iam, count: int) -> list[dict]:
    """Launch count instances in one call and name them srv0000..."""
    fleet = build_network(ec2, iam, cidr="10.20.16.0/20")
    reservation = ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=count, MaxCount=count, SubnetId=fleet.subnet_id
    )
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    return [{"name": f"srv{n:04d}", "instance_id": iid} for n, iid in enumerate(ids)]


def timed_run(endpoint: Endpoint, config: Path) -> tuple[float, Counter, int]:
    """Run one backup; return wall seconds, successful calls by action, and exit code."""
    start_index = len(endpoint.calls)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "ec2_to_ami.py"), "--config", str(config), "-q"],
        env={**os.environ, **aws_env(endpoint.url)},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    calls = Counter(c.action for c in endpoint.calls[start_index:] if c.status < 400)
    if result.returncode:
        print(result.stderr, file=sys.stderr)
    return wall, calls, result.returncode


def bench(endpoint: Endpoint, count: int, workdir: Path) -> list[str]:
    """Table rows for a first and a steady-state run over count servers."""
    endpoint.reset()
    SETTINGS.pending_seconds = 0.5
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint.url)
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=endpoint.url)
    servers = make_servers(ec2, iam, count)
    config = write_config(workdir / f"bench{count}.py", SERVERS=servers, KEEP=1)
    rows = []
    for label in ("first", "steady"):
        wall, calls, code = timed_run(endpoint, config)
        total = sum(calls.values())
        cells = [str(count), label, f"{wall:.1f}", str(total), str(budget(count))]
        cells += [str(calls.get(column, 0)) for column in COLUMNS] + [str(code)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [10, 100]
    os.environ.update(aws_env("http://unused"))
    header = ["N", "run", "wall s", "calls", "budget 3N+⌈N/10⌉+14", *COLUMNS, "exit"]
    print_table(header, counts, bench)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
