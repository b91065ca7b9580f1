"""make demo: back up, lose a server, restore it, and the comparison shows it matches."""

from __future__ import annotations

import os
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
    table = out[out.index("=== Before and after") :]
    assert table.count("  same") == 8 and "DIFFERENT" not in table
    pid = int(re.search(r"Stopped the local endpoint \(pid (\d+)\)", out).group(1))
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
