"""make demo: back up, lose a server, restore it, and the comparison shows it matches."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_demo_restores_a_matching_server_and_stops_its_endpoint():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [sys.executable, "-m", "demo.demo"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("2 server(s): 2 backed up, 0 failed") == 0  # logs go to stderr
    assert result.stderr.count("2 server(s): 2 backed up, 0 failed") == 3
    table = out[out.index("=== Before and after") : out.index("=== What the kept")]
    assert table.count("  same") == 8 and "DIFFERENT" not in table
    # The two backups kept: the second holds the 6,000 blocks written first and the day's
    # 327 changes among them or beyond; the third adds its own 327.
    held = len(set(range(6000)) | set(random.Random(2).sample(range(16384), 327))) + 327
    stored = f"{held / 2048:.2f}"
    cost = out[out.index("=== What the kept") :].splitlines()
    assert [line.split()[:7] for line in cost if line.startswith(("web01", "win01"))] == [
        [name, "daily", "us-east-1", "2", "1", "8", stored] for name in ("web01", "win01")
    ]
    pid = int(re.search(r"Stopped the local endpoint \(pid (\d+)\)", out).group(1))
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
