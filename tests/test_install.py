"""tools/install.sh in a scratch root: the README's install, then its dry run, for real
(a real venv and pip, from pip's cache when it has boto3, else from the index)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, backup_config, run, script_command


def install(root) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys._base_executable}  # not the suite's venv
    script = str(ROOT / "tools" / "install.sh")
    return subprocess.run(["sh", script, "--root", str(root)], capture_output=True, text=True,
                          timeout=240, env=env)  # fmt: skip


def test_install_in_a_scratch_root_then_the_first_dry_run(fleet, endpoint, tmp_path):
    root = tmp_path / "root"
    done = install(root)
    assert done.returncode == 0, done.stderr
    opt, etc = root / "opt/ec2-backup", root / "etc/ec2-backup"
    assert (root / "var/log/ec2-backup").is_dir() and (root / "var/lib/ec2-backup").is_dir()
    python = opt / ".venv/bin/python"
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert "boto3" in names and not names & {"moto", "pytest", "ruff"}  # run time only
    daily = (etc / "daily.py").read_text()
    assert 'SCHEDULE = "weekly"' in (etc / "weekly.py").read_text() and "KEEP = 4" in (
        etc / "weekly.py").read_text()  # fmt: skip
    assert 'LOG_FILE = "/var/log/ec2-backup/daily.log"' in daily
    # Step 3 of the README: the operator fills in the servers (and the log goes where the
    # scratch root has it); step 5: the dry run, with the installed interpreter and tool.
    (etc / "daily.py").write_text(
        daily.replace('"/var/log/', f'"{root}/var/log/')
        + f"\nSERVERS = [{{'name': 'web01', 'instance_id': '{fleet.instances['web01']}'}}]\n"
        + "SELECT_TAGS = {}\n"
    )  # fmt: skip
    command = script_command("ec2_to_ami.py", etc / "daily.py", "--dry-run")
    command[:2] = [str(python), str(opt / "ec2_to_ami.py")]
    dry = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("Would create image web01-daily-")
    # Again: the tool is updated, the operator's config kept.
    again = install(root)
    assert again.returncode == 0 and f"{etc / 'daily.py'} is there already: kept" in again.stdout
    assert "SERVERS = [{'name': 'web01'" in (etc / "daily.py").read_text()


def test_under_q_the_log_file_keeps_the_whole_run_and_stderr_only_problems(fleet, tmp_path):
    """crontab.example's lines: -q, so cron mails only warnings and errors, while LOG_FILE
    keeps each server's line."""
    log = tmp_path / "daily.log"
    config = backup_config(tmp_path, fleet, LOG_FILE=str(log))
    result = run("ec2_to_ami.py", config, "-q")
    assert result.returncode == 0 and result.stderr == ""  # nothing to mail
    assert log.read_text().count(" INFO ") >= 4  # each server backed up, and the summary
    assert "web01 (i-" in log.read_text() and "backed up as ami-" in log.read_text()
