"""make demo: back up, drill, lose a server, restore it, and the comparison shows it
matches."""

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
    drill = out[out.index("=== Restore drill") : out.index("=== Managed backups")]
    rows = [line.split() for line in drill.splitlines() if line.startswith(("web01", "win01"))]
    assert [(r[0], r[4], r[-1]) for r in rows] == [("web01", "terminated", "ok"),
                                                   ("win01", "terminated", "ok")]  # fmt: skip
    assert "2 of 2 servers verified by a drill (and terminated)" in drill
    assert drill.count("DRILL_LOG: ") == 2 and drill.count(" ok: image_resolved") == 2
    listing = out[out.index("=== Managed backups") : out.index("=== Disaster")].splitlines()
    verified = [line.split()[-1] for line in listing if line.startswith(("web01", "win01"))]
    assert verified == ["ok", "-", "ok", "-"]  # the newest of each, as the drill picked
    table = out[out.index("=== Before and after") : out.index("=== What the kept")]
    assert table.count("  same") == 8 and "DIFFERENT" not in table
    # The two backups kept: the second holds the 6,000 blocks written first and the day's
    # 327 changes among them or beyond; the third adds its own 327.
    held = len(set(range(6000)) | set(random.Random(2).sample(range(16384), 327))) + 327
    stored = f"{held / 2048:.2f}"
    cost = out[out.index("=== What the kept") :].splitlines()
    assert [line.split()[:8] for line in cost if line.startswith(("web01", "win01"))] == [
        [name, "daily", "us-east-1", "daily", "2", "1", "8", stored] for name in ("web01", "win01")
    ]
    pid = int(re.search(r"Stopped the local endpoint \(pid (\d+)\)", out).group(1))
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
