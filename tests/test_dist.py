"""The tool as a host gets it: one .pyz per command (make dist), or `pip install .`.

Each is run as a process, as cron or a person runs it: --version, --help, a dry run
against the endpoint with its config found the documented way, and a bad config
refused with exit 2 and no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ec2ami import __version__
from localaws.fleet import aws_env
from tests.conftest import ROOT, backup_config, run, write_config
from tools.make_dist import build


def process(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a command of the installed tool with no terminal, as cron does."""
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dist"))[0].parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` into a directory of its own, from a copy of the source (a build
    writes into its tree). No network: the build backend is in .venv."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "ec2ami", source / "ec2ami",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(target), str(source)], check=True, capture_output=True)  # fmt: skip
    return target


def test_each_pyz_says_its_version_and_usage(pyz, tmp_path):
    for name in ("ec2_to_ami.pyz", "ami_to_ec2.pyz"):
        version = process([sys.executable, str(pyz / name), "--version"], tmp_path)
        assert version.returncode == 0 and version.stdout.strip().endswith(__version__)
        usage = process([sys.executable, str(pyz / name), "--help"], tmp_path)
        assert usage.returncode == 0 and "--config" in usage.stdout


def test_the_backup_pyz_finds_its_config_beside_itself_and_changes_nothing_in_a_dry_run(
    pyz, fleet, ec2, endpoint, tmp_path
):
    host = tmp_path / "opt"
    host.mkdir()
    (host / "ec2_to_ami.pyz").write_bytes((pyz / "ec2_to_ami.pyz").read_bytes())
    backup_config(host, fleet, name="ec2_to_ami_config.py")
    before = ec2.describe_images(Owners=["self"])["Images"]
    dry = process([sys.executable, str(host / "ec2_to_ami.pyz"), "--dry-run"], tmp_path,
                  **aws_env(endpoint.url))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "Would create image" in dry.stdout and "web01" in dry.stdout
    assert ec2.describe_images(Owners=["self"])["Images"] == before


def test_the_restore_pyz_plans_a_restore_from_a_real_backup(pyz, fleet, endpoint, tmp_path):
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    (tmp_path / "ami_to_ec2_config.py").write_text("", encoding="utf-8")
    dry = process([sys.executable, str(pyz / "ami_to_ec2.pyz"), "--config",
                   str(tmp_path / "ami_to_ec2_config.py"), "--server", "web01", "--dry-run"],
                  tmp_path, **aws_env(endpoint.url))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "web01" in dry.stdout


def test_a_bad_config_is_exit_2_with_no_traceback_from_the_pyz_and_the_command(
    pyz, installed, tmp_path
):
    bad = write_config(tmp_path / "bad.py", KEEP=-1, SERVERS=[])
    commands = [
        [sys.executable, str(pyz / "ec2_to_ami.pyz"), "--config", str(bad)],
        [str(installed / "bin" / "ec2-to-ami"), "--config", str(bad)],
    ]
    for command in commands:
        result = process(command, tmp_path, PYTHONPATH=str(installed))
        assert result.returncode == 2, result.stderr
        assert "KEEP" in result.stderr and "Traceback" not in result.stderr


def test_pip_install_gives_both_commands(installed, fleet, endpoint, tmp_path):
    env = {"PYTHONPATH": str(installed), **aws_env(endpoint.url)}
    for command in ("ec2-to-ami", "ami-to-ec2"):
        version = process([str(installed / "bin" / command), "--version"], tmp_path, **env)
        assert version.returncode == 0 and version.stdout.strip().endswith(__version__)
    config = backup_config(tmp_path, fleet)
    dry = process([str(installed / "bin" / "ec2-to-ami"), "--config", str(config), "--dry-run"],
                  tmp_path, **env)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "Would create image" in dry.stdout
