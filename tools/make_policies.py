"""Write docs/iam/*.json: each is --print-iam-policy of its example config in docs/iam/examples.

python tools/make_policies.py      (tests/test_iam.py keeps them current)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {  # each docs/iam file: --print-iam-policy of its example config
    "backup-plain-policy.json": ("ec2_to_ami.py", "backup-plain.py"),
    "backup-policy.json": ("ec2_to_ami.py", "backup-ssm.py"),
    "backup-dr-policy.json": ("ec2_to_ami.py", "backup-dr.py"),
    "restore-policy.json": ("ami_to_ec2.py", "restore.py"),
    "drill-policy.json": ("ami_to_ec2.py", "drill.py", "--drill"),
}


def printed(name: str) -> str:
    """The policy that a shipped file's example config prints."""
    script, example, *args = SHIPPED[name]
    config = ROOT / "docs" / "iam" / "examples" / example
    command = [sys.executable, str(ROOT / script), "--config", str(config), "--print-iam-policy"]
    return subprocess.run([*command, *args], capture_output=True, text=True, check=True).stdout


if __name__ == "__main__":
    for name in SHIPPED:
        (ROOT / "docs" / "iam" / name).write_text(printed(name), encoding="utf-8")
        print(ROOT / "docs" / "iam" / name)
