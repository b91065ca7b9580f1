"""--install-cron, --show-cron and --uninstall-cron against Debian's real crontab command."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import ROOT, run, write_config

UNRELATED = (
    b"# my own jobs\n"
    b"MAILTO=ops@example.com\n"
    b"*/5 * * * * /usr/local/bin/check-disk  --warn 90%\n"
    b"\n"
    b"@reboot   /usr/local/bin/hello   # trailing comment\n"
)


def crontab_l() -> bytes:
    result = subprocess.run(["crontab", "-l"], capture_output=True, check=False)
    return result.stdout if result.returncode == 0 else b""


CRONTAB_LOCK = os.path.join(tempfile.gettempdir(), "ec2-ami-backup-tests-crontab.lock")
CRON_USER = "ec2ami-crontest"  # a system user of the tests' own: never your crontab


@pytest.fixture
def crontab(tmp_path, monkeypatch):
    """A crontab of the tests' own user, empty at the start, emptied after the test.

    Debian's real crontab command does the work: `crontab` first on PATH is a two-line
    script that runs it with `-u ec2ami-crontest` (root may edit another user's crontab),
    so neither the tool nor the tests ever read or write the crontab of whoever runs the
    suite. There is one crontab per user and the suite runs in several workers: a lock
    across processes lets one test at a time have it.
    """
    real = shutil.which("crontab")
    if real is None:
        pytest.fail("the crontab command is missing: `make test` installs Debian's cron package "
                    "when run as root; otherwise apt-get install cron")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the tests a crontab of their own user instead of yours")
    if subprocess.run(["id", CRON_USER], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        CRON_USER], capture_output=True, check=False)  # fmt: skip
    shim = tmp_path / "bin" / "crontab"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {real} -u {CRON_USER} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    with open(CRONTAB_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["crontab", "-r"], capture_output=True, check=False)
        try:
            yield
        finally:
            subprocess.run(["crontab", "-r"], capture_output=True, check=False)


@pytest.fixture
def config(tmp_path):
    return write_config(
        tmp_path / "daily 100%.py",  # a space and a percent sign, which cron must not mangle
        SERVERS=[{"name": "web01", "instance_id": "i-0123456789abcdef0"}],
        REGION="us-east-1",
    )


def entries(content: bytes) -> list[str]:
    return [line for line in content.decode().splitlines() if "# ec2-to-ami-cron config=" in line]


def test_install_writes_one_complete_entry(crontab, config, tmp_path):
    log = tmp_path / "backup.log"
    result = run("ec2_to_ami.py", config, "--install-cron", "0 2 * * *", "--cron-log", str(log))
    assert result.returncode == 0, result.stderr
    [entry] = entries(crontab_l())
    assert entry.startswith("0 2 * * * flock -n ")
    assert sys.executable in entry and str(ROOT / "ec2_to_ami.py") in entry
    assert " -q >> " in entry and str(log) in entry and entry.rstrip().endswith("100\\%.py")
    assert "daily 100\\%.py" in entry  # cron turns \% back into %
    yours = subprocess.run(["/usr/bin/crontab", "-l"], capture_output=True, check=False)
    assert b"ec2-to-ami-cron" not in yours.stdout  # the suite's user has its own crontab


def test_the_installed_command_runs_and_fails_saying_how_to_give_it_credentials(
    crontab, config, tmp_path
):
    """What cron would run: the command part, with cron's \\% unescaped, through sh, with
    cron's bare environment (and no instance metadata to wait for, off EC2)."""
    log = tmp_path / "backup.log"
    run("ec2_to_ami.py", config, "--install-cron", "@daily", "--cron-log", str(log))
    [entry] = entries(crontab_l())
    command = entry.split(" ", 1)[1].replace("\\%", "%")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    result = subprocess.run(["sh", "-c", command], env=env, check=False)
    assert result.returncode == 1
    assert "NoCredentialsError" in log.read_text() and "run `aws configure`" in log.read_text()


def test_install_refuses_what_cron_cannot_resolve(crontab, tmp_path, monkeypatch):
    servers = [{"name": "web01", "instance_id": "i-0123456789abcdef0"}]
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws files
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # this shell's only
    no_region = write_config(tmp_path / "a.py", SERVERS=servers)
    result = run("ec2_to_ami.py", no_region, "--install-cron", "@daily")
    assert result.returncode == 2 and "cron does not have: set REGION" in result.stderr
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    keys_here = write_config(tmp_path / "b.py", SERVERS=servers, REGION="us-east-1")
    result = run("ec2_to_ami.py", keys_here, "--install-cron", "@daily")
    assert result.returncode == 2 and "this shell's AWS_ACCESS_KEY_ID" in result.stderr
    assert entries(crontab_l()) == []


def test_install_again_replaces_the_entry(crontab, config):
    run("ec2_to_ami.py", config, "--install-cron", "0 2 * * *")
    run("ec2_to_ami.py", config, "--install-cron", "30 3 * * 0")
    [entry] = entries(crontab_l())
    assert entry.startswith("30 3 * * 0 ")


def test_unrelated_lines_survive_byte_for_byte(crontab, config, tmp_path):
    subprocess.run(["crontab", "-"], input=UNRELATED, check=True)
    other = write_config(
        tmp_path / "weekly.py",
        SERVERS=[{"name": "a", "instance_id": "i-0badcafe"}],
        REGION="us-east-1",
    )
    run("ec2_to_ami.py", other, "--install-cron", "0 4 * * 0")
    run("ec2_to_ami.py", config, "--install-cron", "0 2 * * *")
    run("ec2_to_ami.py", config, "--install-cron", "0 1 * * *")
    content = crontab_l()
    assert content.startswith(UNRELATED)
    assert len(entries(content)) == 2
    assert run("ec2_to_ami.py", config, "--uninstall-cron").returncode == 0
    assert run("ec2_to_ami.py", other, "--uninstall-cron").returncode == 0
    assert crontab_l() == UNRELATED


def test_show_prints_only_this_configs_entry(crontab, config, tmp_path):
    other = write_config(
        tmp_path / "weekly.py",
        SERVERS=[{"name": "a", "instance_id": "i-0badcafe"}],
        REGION="us-east-1",
    )
    run("ec2_to_ami.py", other, "--install-cron", "0 4 * * 0")
    missing = run("ec2_to_ami.py", config, "--show-cron")
    assert missing.returncode == 1 and "no crontab entry for" in missing.stderr
    run("ec2_to_ami.py", config, "--install-cron", "0 2 * * *")
    shown = run("ec2_to_ami.py", config, "--show-cron")
    assert shown.returncode == 0
    assert shown.stdout.splitlines() == entries(crontab_l())[1:]


def test_uninstall_without_an_entry_changes_nothing(crontab, config):
    subprocess.run(["crontab", "-"], input=UNRELATED, check=True)
    assert run("ec2_to_ami.py", config, "--uninstall-cron").returncode == 0
    assert crontab_l() == UNRELATED


@pytest.mark.parametrize("schedule", ["0 2 * *", "every day", "0 2 * * * rm -rf /"])
def test_bad_schedule_exits_2_and_leaves_the_crontab(crontab, config, schedule):
    subprocess.run(["crontab", "-"], input=UNRELATED, check=True)
    result = run("ec2_to_ami.py", config, "--install-cron", schedule)
    assert result.returncode == 2
    assert "give five cron fields" in result.stderr
    assert crontab_l() == UNRELATED


def test_bad_config_is_not_installed(crontab, tmp_path):
    bad = write_config(tmp_path / "bad.py", KEPP=3)
    result = run("ec2_to_ami.py", bad, "--install-cron", "0 2 * * *")
    assert result.returncode == 2
    assert crontab_l() == b""
