"""Benchmark: a backup in an account whose CreateImage bucket is busier than documented.

Another tool in the account spends part of CreateImage's bucket, so EC2 refuses calls
the pacer's copy of the documented bucket (50, then 5 a second) allows: the endpoint's
bucket is 20, then 2 a second (localaws: throttle(busier=...)). Images pend half a
second. Three ways to meet it, each a first run of N servers against full buckets:

- static: the pacer at the documented pace, and botocore's standard retries (the tool
  before its pacer adapted; this benchmark switches the adaptation off in its process);
- adaptive pacer: the tool as it is (ec2ami/aws.py, Pacer.throttled);
- botocore adaptive: the static pacer under botocore's own adaptive retry mode
  (AWS_RETRY_MODE=adaptive), a client-side rate limiter shared by all of a client's calls.

It reports the wall time, its ratio to the busier bucket's floor ((N - 20) / 2 s), the
calls EC2 refused, the servers that failed and the exit code.

    .venv/bin/python -m bench.throttled 100
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import launch_servers, print_table
from localaws.endpoint import SETTINGS, Endpoint
from localaws.fleet import ROOT, aws_env, write_config

BUSIER = {"CreateImage": (20, 2.0)}
STATIC = "import ec2ami.aws as a; a.Pacer.throttled = lambda self, **_: None; "
VARIANTS = [
    ("static pacer, standard retries", STATIC, {}),
    ("adaptive pacer (the tool)", "", {}),
    ("static pacer, botocore adaptive", STATIC, {"AWS_RETRY_MODE": "adaptive"}),
]


def run_once(endpoint: Endpoint, config: Path, prelude: str, env: dict) -> dict:
    """One backup run against full (busier) buckets."""
    endpoint.throttle(busier=BUSIER)
    start = len(endpoint.calls)
    started = time.monotonic()
    code = prelude + "import sys, ec2_to_ami; sys.exit(ec2_to_ami.main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "--config", str(config)], cwd=ROOT,
        env={**os.environ, **aws_env(endpoint.url), **env}, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    endpoint.throttle(False)
    calls = endpoint.calls[start:]
    summary = re.search(r"(\d+) backed up, (\d+) failed", result.stderr)
    return {
        "wall": wall,
        "refused": sum(c.status == 503 for c in calls),
        "failed": int(summary.group(2)) if summary else -1,
        "exit": result.returncode,
    }


def bench(endpoint: Endpoint, count: int, workdir: Path) -> list[str]:
    rows = []
    size, rate = BUSIER["CreateImage"]
    floor = max(0, count - size) / rate
    for label, prelude, env in VARIANTS:
        endpoint.reset()
        SETTINGS.pending_seconds = 0.5
        servers = launch_servers(endpoint, count)
        config = write_config(workdir / f"throttled{count}.py", SERVERS=servers, KEEP=1)
        r = run_once(endpoint, config, prelude, env)
        cells = [count, label, f"{r['wall']:.1f}", f"{floor:.1f}", f"{r['wall'] / floor:.2f}",
                 r["refused"], r["failed"], r["exit"]]  # fmt: skip
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [100]
    header = ["N", "pacing", "wall s", "floor s", "ratio", "refused calls", "failed servers",
              "exit"]  # fmt: skip
    print_table(header, counts, bench)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
