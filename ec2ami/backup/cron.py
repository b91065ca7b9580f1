"""--install-cron, --show-cron, --uninstall-cron: one managed crontab entry per config;
nothing else in the crontab is touched.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess

from ec2ami.errors import EXIT_FAILED, EXIT_OK, ConfigError
from ec2ami.settings import command_of, lock_path

log = logging.getLogger(__name__)

CRON_MARKER = "# ec2-to-ami-cron config="  # ends each managed crontab entry
CRON_SPECIAL = {"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                "@hourly"}  # fmt: skip
CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-]+$")


class CronError(Exception):
    """The crontab could not be read or written."""


def check_cron_schedule(schedule: str) -> None:
    """Five cron fields, or one of cron's @-names."""
    fields = schedule.split()
    if schedule.strip() in CRON_SPECIAL:
        return
    if len(fields) != 5 or not all(CRON_FIELD_RE.match(f) for f in fields):
        raise ConfigError(f"--install-cron {schedule!r}: give five cron fields, e.g. '0 2 * * *'")


def check_cron_can_run(region: str | None, profile: str | None, role_arn: str | None) -> None:
    """Refuse an entry that would fail every night in silence: cron runs the job with a
    bare environment (HOME, LOGNAME, PATH, SHELL), so a region or credentials that come
    only from this shell's AWS_* variables are not there. What the config and the
    profile's files give, cron has too (an instance role cannot be told from here, and is
    not refused)."""
    import botocore.session

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        core = botocore.session.Session(profile=profile)
        resolved = region or core.get_config_variable("region")
        resolver = core.get_component("credential_provider")
        for name in ("iam-role", "container-role"):  # no metadata calls at install time
            resolver.remove(name)
        credentials = core.get_credentials()
    except Exception as err:  # a profile cron cannot find is the same failure
        raise ConfigError(f"--install-cron: cron could not load the AWS profile: {err}") from None
    finally:
        os.environ.update(saved)
    if not resolved:
        raise ConfigError(
            "--install-cron: REGION is None and the profile sets no region, so the region "
            "comes from this shell's environment, which cron does not have: set REGION"
        )
    if credentials is None and "AWS_ACCESS_KEY_ID" in saved:
        raise ConfigError(
            "--install-cron: the credentials come from this shell's AWS_ACCESS_KEY_ID, "
            "which cron does not have: use a profile (PROFILE) or the host's instance role"
        )


def cron_marker(config_path: str) -> str:
    """The comment that ends this config's crontab entry."""
    return CRON_MARKER + os.path.abspath(config_path)


def cron_entry(schedule: str, config_path: str, log_path: str, script: str | None) -> str:
    """The crontab line: flock, absolute paths, -q, output appended to a log, the marker."""
    config = os.path.abspath(config_path)
    words = ["flock", "-n", lock_path(config, "cron.lock"), *command_of(script), "--config", config]
    command = " ".join(shlex.quote(w) for w in words) + " -q"
    command += f" >> {shlex.quote(os.path.abspath(log_path))} 2>&1"
    return f"{' '.join(schedule.split())} {command} {cron_marker(config)}".replace("%", "\\%")


def read_crontab() -> bytes:
    """The current user's crontab, byte for byte (empty if there is none)."""
    try:
        result = subprocess.run(["crontab", "-l"], capture_output=True, check=False)
    except FileNotFoundError:
        raise CronError(
            "the crontab command is not installed (Debian: apt-get install cron)"
        ) from None
    if result.returncode and b"no crontab" not in result.stderr:
        raise CronError(f"crontab -l failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout if result.returncode == 0 else b""


def write_crontab(content: bytes) -> None:
    """Replace the current user's crontab."""
    result = subprocess.run(["crontab", "-"], input=content, capture_output=True, check=False)
    if result.returncode:
        raise CronError(f"crontab - failed: {result.stderr.decode(errors='replace').strip()}")


def split_crontab(content: bytes, config_path: str) -> tuple[list[bytes], list[bytes]]:
    """The crontab's lines: (this config's entries, all other lines), each with its newline."""
    marker = cron_marker(config_path).replace("%", "\\%").encode()
    ours: list[bytes] = []
    others: list[bytes] = []
    for line in content.splitlines(keepends=True):
        (ours if line.rstrip(b"\r\n").endswith(marker) else others).append(line)
    return ours, others


def manage_cron(args: argparse.Namespace, script: str | None) -> int:
    """Install, show or uninstall this config's crontab entry; nothing else is touched."""
    ours, others = split_crontab(read_crontab(), args.config)
    if args.show_cron:
        for line in ours:
            print(line.decode().rstrip("\n"))
        if not ours:
            log.error("no crontab entry for %s", os.path.abspath(args.config))
        return EXIT_OK if ours else EXIT_FAILED
    kept = b"".join(others)
    if kept and not kept.endswith(b"\n"):
        kept += b"\n"
    if args.install_cron:
        log_path = args.cron_log or default_cron_log(args.config)
        kept += (cron_entry(args.install_cron, args.config, log_path, script) + "\n").encode()
    write_crontab(kept)
    verb = "installed" if args.install_cron else "removed" if ours else "nothing to remove for"
    log.info("crontab entry %s: %s", verb, os.path.abspath(args.config))
    if args.install_cron:
        log.info("its output goes to %s (-q: only warnings and errors); to be told when a "
                 "run fails, also install the hourly check: %s", log_path,
                 " ".join([*command_of(script), "--config", os.path.abspath(args.config),
                           "--check", "-q"]))  # fmt: skip
    return EXIT_OK


def default_cron_log(config_path: str) -> str:
    """~/ec2_to_ami.<config name>.log"""
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join(os.path.expanduser("~"), f"ec2_to_ami.{stem}.log")
