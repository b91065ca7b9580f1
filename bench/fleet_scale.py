"""Benchmark: ec2_to_ami.py over hundreds of servers at EC2's throttling limits.

The local endpoint emulates EC2's request token buckets (localaws/endpoint.py:
CreateImage draws on the mutating bucket, 50 then 5 per second;
DeregisterImage on its own, 100 then 5 per second). Images stay pending for
half a second. Each run starts with full buckets, as after a quiet night.

For each N it runs a first backup (nothing to prune) and a steady-state one
(KEEP=1: N creates and N deregistrations) and reports the wall time, the
buckets' minimum for that run (creates beyond the burst at 5/s and
deregistrations beyond theirs at 5/s, which may overlap, so the larger of the
two), their ratio, the calls EC2 refused, and the servers that failed.

    .venv/bin/python -m bench.fleet_scale 100 300 500
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import budget, launch_servers, print_table
from ec2ami.facts import request_bucket
from localaws.endpoint import SETTINGS, Endpoint
from localaws.fleet import ROOT, aws_env, write_config


def bucket_minimum(creates: int, deregisters: int) -> float:
    """Seconds EC2's buckets need for these calls, at the least."""
    create_size, create_rate = request_bucket("CreateImage")
    delete_size, delete_rate = request_bucket("DeregisterImage")
    return max(
        max(0, creates - create_size) / create_rate,
        max(0, deregisters - delete_size) / delete_rate,
    )


def run_once(endpoint: Endpoint, config: Path, timeline: bool = False) -> dict:
    """One backup run against full buckets; its numbers (and, with timeline, when each
    action's first and last call arrived)."""
    endpoint.throttle()
    start = len(endpoint.calls)
    started = time.monotonic()
    arrivals: dict[str, list[float]] = {}
    if timeline:
        endpoint.hooks.append(
            lambda c: arrivals.setdefault(c.action, []).append(time.monotonic() - started)
        )
    result = subprocess.run(
        [sys.executable, str(ROOT / "ec2_to_ami.py"), "--config", str(config)],
        env={**os.environ, **aws_env(endpoint.url)},
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    endpoint.throttle(False)
    endpoint.hooks.clear()
    for action, times in sorted(arrivals.items(), key=lambda kv: kv[1][0]):
        span = f"first {times[0]:6.1f} s, last {times[-1]:6.1f} s"
        print(f"    {action:24} {span}, {len(times)} calls", file=sys.stderr)
    calls = endpoint.calls[start:]
    ok = [c for c in calls if c.status < 400]
    summary = re.search(r"(\d+) backed up, (\d+) failed", result.stderr)
    return {
        "wall": wall,
        "creates": sum(c.action == "CreateImage" for c in ok),
        "deregisters": sum(c.action == "DeregisterImage" for c in ok),
        "ok": len(ok),
        "refused": sum(c.status == 503 for c in calls),
        "failed": int(summary.group(2)) if summary else -1,
        "exit": result.returncode,
    }


def bench(endpoint: Endpoint, count: int, workdir: Path, timeline: bool = False) -> list[str]:
    endpoint.reset()
    SETTINGS.pending_seconds = 0.5
    servers = launch_servers(endpoint, count)
    config = write_config(workdir / f"scale{count}.py", SERVERS=servers, KEEP=1)
    rows = []
    for label in ("first", "steady"):
        r = run_once(endpoint, config, timeline)
        minimum = bucket_minimum(r["creates"], r["deregisters"])
        ratio = f"{r['wall'] / minimum:.2f}" if minimum else "-"
        cells = [count, label, f"{r['wall']:.1f}", f"{minimum:.1f}", ratio, r["refused"],
                 r["failed"], r["ok"], budget(count), r["exit"]]  # fmt: skip
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def main(argv: list[str]) -> int:
    timeline = "--timeline" in argv
    counts = [int(a) for a in argv if a != "--timeline"] or [100, 300, 500]
    header = ["N", "run", "wall s", "bucket min s", "ratio", "throttled", "failed servers",
              "calls ok", "budget 3N+⌈N/10⌉+14", "exit"]  # fmt: skip
    print_table(header, counts, lambda e, n, d: bench(e, n, d, timeline))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
