"""What a person at a terminal sees: live lines while a restore waits, and after Ctrl-C a
summary with the command that finishes the job. A real pseudo-terminal, a real process."""

from __future__ import annotations

import os
import pty
import re
import shlex
import signal
import subprocess
import time

from localaws.endpoint import SETTINGS, finish_pending
from tests.conftest import backup_config, managed, run, script_command, write_config

CURSOR_UP = re.compile(r"\x1b\[\d+F")


def read_until(master: int, seen: bytearray, wanted: str, seconds: float = 60.0) -> str:
    """Read the terminal until wanted appears in it (or the deadline passes)."""
    deadline = time.monotonic() + seconds
    while wanted not in seen.decode(errors="replace"):
        assert time.monotonic() < deadline, f"no {wanted!r} in: {seen.decode(errors='replace')}"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the process ended and closed the terminal
            break
        seen += chunk
    return seen.decode(errors="replace")


def test_a_fleet_restore_shows_live_lines_and_ctrl_c_ends_with_the_resume_command(
    ec2, fleet, tmp_path
):
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    ec2.terminate_instances(InstanceIds=[fleet.instances["web01"], fleet.instances["app01"]])
    SETTINGS.instance_pending_seconds = 120.0  # they stay pending until the Ctrl-C
    config = write_config(tmp_path / "restore.py", SERVERS=["web01", "app01"], WAIT="running")
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "NO_COLOR": "1", "COLUMNS": "200"}
    process = subprocess.Popen(script_command("ami_to_ec2.py", config), stdin=slave,
                               stdout=slave, stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    seen = bytearray()
    try:
        screen = read_until(master, seen, "app01 launched (i-")
        screen = read_until(master, seen, "restore: 0/2 done, 2 s")  # redrawn as time passes
        assert CURSOR_UP.search(screen)  # drawn in place, not scrolled
        assert "web01 launched (i-" in screen and "waits for running" in screen
        assert "\x1b[31m" not in screen and "\x1b[33m" not in screen  # NO_COLOR
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=60)
        screen = read_until(master, seen, "to finish it, run: ")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert process.returncode == 1 and "Traceback" not in screen
    summary = screen[screen.rindex("interrupted") :]
    assert not CURSOR_UP.search(summary)  # the live lines are gone before the summary
    assert "web01: launched i-" in summary and "app01: launched i-" in summary
    assert "Without --client-token, a rerun would stop" in summary
    # The printed command, run as printed, finishes the same instances.
    command = shlex.split(summary.split("to finish it, run: ")[1].splitlines()[0])
    finish_pending()
    launched = {i["InstanceId"] for i in managed_instances(ec2)}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert {i["InstanceId"] for i in managed_instances(ec2)} == launched  # nothing new
    assert "\x1b[" not in finished.stderr  # not a terminal: plain lines


def managed_instances(ec2) -> list[dict]:
    filters = [{"Name": "instance-state-name", "Values": ["pending", "running"]},
               {"Name": "tag-key", "Values": ["ec2-to-ami:restored-from"]}]  # fmt: skip
    return [i for r in ec2.describe_instances(Filters=filters)["Reservations"]
            for i in r["Instances"]]  # fmt: skip


def test_a_backup_without_a_terminal_says_it_still_waits(ec2, fleet, tmp_path, monkeypatch):
    """No terminal (cron, a pipe): no live lines, but a heartbeat line while images pend."""
    from ec2ami import live

    monkeypatch.setattr(live, "HEARTBEAT_SECONDS", 0.5)
    SETTINGS.pending_seconds = 2.0
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet))
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr
    beats = [line for line in result.stderr.splitlines() if "still waiting" in line]
    assert beats and re.search(r"web01 \(i-\w+\): ami-\w+ pending", "".join(beats))
    assert len(managed(ec2)) == 3
