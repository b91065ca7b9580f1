"""Benchmark: the calls and wall time of ec2_to_ami.py --cost over N servers.

Each server has two 1 GiB volumes. Seven daily backups are taken with the real script,
with 1,000 blocks written to each volume first and 2 % of its blocks (40) changed
before each later backup. Then --cost runs as a subprocess against the local endpoint,
and the table gives its calls by action against the documented budget:

    1 DescribeImages page + ceil(snapshots / 200) DescribeSnapshots
    + ceil(volumes / 200) DescribeVolumes + 1 ListSnapshotsInRecycleBin
    + per volume: ceil(oldest snapshot's blocks / 10,000) ListSnapshotBlocks (or, for a
                  volume made from a snapshot, ListChangedBlocks against it)
                  + per later backup, ceil(changed blocks / 10,000) ListChangedBlocks

The EBS direct API calls are paced at 50 a second each (their Service Quotas), so the
wall time is about ListChangedBlocks / 50 seconds, plus the endpoint's own time.

    .venv/bin/python -m bench.cost_calls 10 100
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3

from bench import KEYS, print_table
from localaws.endpoint import BLOCKS_PER_GIB, LINUX_AMI, SETTINGS, Endpoint, write_blocks
from localaws.fleet import REGION, ROOT, aws_env, build_network, write_config

BACKUPS, VOLUMES = 7, 2
FIRST_BLOCKS, DAILY_CHANGE = 1000, BLOCKS_PER_GIB // 50
COLUMNS = ["DescribeImages", "DescribeSnapshots", "DescribeVolumes", "ListSnapshotsInRecycleBin",
           "ListSnapshotBlocks", "ListChangedBlocks"]  # fmt: skip


def servers_with_two_volumes(endpoint: Endpoint, count: int) -> tuple[list[dict], list[str]]:
    """count instances, each with a 1 GiB root and a 1 GiB data volume."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url, **KEYS)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint.url, **KEYS)
    fleet = build_network(ec2, iam, cidr="10.20.16.0/20")
    disks = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 1}},
             {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}]  # fmt: skip
    instances = ec2.run_instances(ImageId=LINUX_AMI, MinCount=count, MaxCount=count,
                                  SubnetId=fleet.subnet_id, BlockDeviceMappings=disks)  # fmt: skip
    ids = [i["InstanceId"] for i in instances["Instances"]]
    volumes = [
        m["Ebs"]["VolumeId"]
        for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]
        for i in r["Instances"]
        for m in i["BlockDeviceMappings"]
    ]
    return [{"name": f"srv{n:04d}", "instance_id": iid} for n, iid in enumerate(ids)], volumes


def run(endpoint: Endpoint, config: Path, *args: str) -> tuple[float, Counter]:
    """Run the backup script; return its wall time and successful calls by action."""
    start, started = len(endpoint.calls), time.monotonic()
    command = [sys.executable, str(ROOT / "ec2_to_ami.py"), "--config", str(config), "-q", *args]
    result = subprocess.run(command, env={**os.environ, **aws_env(endpoint.url)},
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode:
        raise SystemExit(result.stderr)
    wall = time.monotonic() - started
    return wall, Counter(c.action for c in endpoint.calls[start:] if 0 < c.status < 400)


def bench(endpoint: Endpoint, count: int, workdir: Path) -> list[str]:
    """One row: --cost over count servers with seven backups of two volumes each."""
    endpoint.reset()
    SETTINGS.pending_seconds = 0.0
    servers, volumes = servers_with_two_volumes(endpoint, count)
    config = write_config(workdir / f"cost{count}.py", SERVERS=servers, KEEP=BACKUPS)
    rng = random.Random(count)
    for day in range(BACKUPS):
        for volume in volumes:
            changed = range(FIRST_BLOCKS) if day == 0 else rng.sample(range(BLOCKS_PER_GIB),
                                                                      DAILY_CHANGE)  # fmt: skip
            write_blocks(volume, changed)
        run(endpoint, config)
        time.sleep(1.0)  # the next run's image names are a second later
    wall, calls = run(endpoint, config, "--cost")
    snapshots = count * VOLUMES * BACKUPS
    budget = 1 + math.ceil(snapshots / 200) + math.ceil(count * VOLUMES / 200) + 1
    budget += count * VOLUMES * BACKUPS
    cells = [str(count), str(snapshots), f"{wall:.1f}", str(sum(calls.values())), str(budget)]
    cells += [str(calls.get(column, 0)) for column in COLUMNS]
    return ["| " + " | ".join(cells) + " |"]


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [10, 100]
    os.environ.update(aws_env("http://unused"))
    header = ["N", "snapshots", "wall s", "calls", "budget", *COLUMNS]
    print_table(header, counts, bench)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
