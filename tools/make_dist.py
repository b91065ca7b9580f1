"""Build dist/ec2_to_ami.pyz and dist/ami_to_ec2.pyz: each the whole ec2ami package as one file.

A zipapp (PEP 441) runs with `python3 ec2_to_ami.pyz ...` on any host with Python 3.10+
and boto3, and finds its config beside itself, as the scripts in a clone do.

    python tools/make_dist.py [OUTPUT_DIR]     (make dist: OUTPUT_DIR is dist/)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN = '''"""{name}.pyz: the {what} command line, with its config beside this file by default."""

import os
import sys

from ec2ami.{side} import cli

sys.exit(cli.main(script=os.path.dirname(__file__)))
'''
COMMANDS = {"ec2_to_ami": ("backup", "backup"), "ami_to_ec2": ("restore", "restore")}


def build(output: Path) -> list[Path]:
    """Write one .pyz per command into output; return their paths."""
    output.mkdir(parents=True, exist_ok=True)
    made = []
    for name, (side, what) in COMMANDS.items():
        with tempfile.TemporaryDirectory() as staging:
            source = Path(staging)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / "ec2ami", source / "ec2ami", ignore=ignore)
            main = MAIN.format(name=name, what=what, side=side)
            (source / "__main__.py").write_text(main, encoding="utf-8")
            target = output / f"{name}.pyz"
            zipapp.create_archive(source, target, interpreter="/usr/bin/env python3")
            made.append(target)
    return made


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"):
        print(path)
