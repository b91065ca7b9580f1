"""Read a config module (a plain Python file of UPPER_CASE settings) before any AWS call."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from typing import Any

from ec2ami.errors import ConfigError
from ec2ami.facts import KMS_KEY_ARN_RE


def read_settings(path: str, known: Any = ()) -> dict[str, Any]:
    """Run a config file and return its UPPER_CASE settings, not yet checked; a lower-case
    name that is a known setting's is a mistake the run would otherwise silently ignore."""
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    namespace: dict[str, Any] = {"__file__": path, "__name__": "config"}
    try:
        exec(compile(source, path, "exec"), namespace)  # the config is Python by design
    except SyntaxError as err:
        raise ConfigError(f"{path}, line {err.lineno}: syntax error: {err.msg}") from None
    except BaseException as err:  # any failure in the file, even sys.exit(), is a config error
        raise ConfigError(f"{path}: {type(err).__name__}: {err}") from None
    for name in namespace:
        if not name.isupper() and name.upper() in known:
            raise ConfigError(f"{path}: {name}: settings are UPPER_CASE: did you mean "
                              f"{name.upper()}?")  # fmt: skip
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


def beside(script: str | None, name: str) -> str:
    """The path of name beside the running script or .pyz (the working directory if None)."""
    return os.path.join(os.path.dirname(os.path.abspath(script)) if script else os.getcwd(), name)


def command_of(script: str | None) -> list[str]:
    """How cron runs this same tool again: the interpreter and the script, .pyz or command."""
    return [sys.executable, os.path.abspath(script or sys.argv[0])]


def check_choice(config: dict, name: str, kind: type) -> None:
    """A setting that is None or a non-empty value of kind."""
    value = config[name]
    if value is not None and (not isinstance(value, kind) or not value):
        raise ConfigError(f"{name} must be None or a non-empty {kind.__name__}, not {value!r}")


def check_pattern(config: dict, name: str, pattern: re.Pattern[str], want: str) -> None:
    """A setting that is None or matches pattern."""
    value = config[name]
    if value is not None and (not isinstance(value, str) or not pattern.match(value)):
        raise ConfigError(f"{name} must be None or {want}, not {value!r}")


def check_key_arns(config: dict, name: str) -> None:
    """BACKUP_KMS_KEYS: a list of KMS key ARNs (IAM names keys by ARN, never by alias)."""
    value = config[name]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(k, str) and KMS_KEY_ARN_RE.match(k) for k in value
    ):
        example = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-..."
        raise ConfigError(f"{name} must be a list of KMS key ARNs such as {example}, not {value!r}")


def check_api_limits(config: dict, name: str) -> None:
    """EC2_API_LIMITS: {"RunInstances": (bucket size, refill per second), ...}, for an
    account whose EC2 throttling limits AWS has raised."""
    value = config[name]
    example = '{"RunInstances": (10, 4)}'
    if not isinstance(value, dict) or not all(
        isinstance(api, str) and api[:1].isupper() and api.isalnum()
        and isinstance(limit, (list, tuple)) and len(limit) == 2
        and all(isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0
                for n in limit)
        for api, limit in value.items()
    ):  # fmt: skip
        raise ConfigError(f"{name} must be a dict of EC2 API name to (bucket size, refill "
                          f"per second), such as {example}, not {value!r}")  # fmt: skip


def check_enum(config: dict, name: str, choices: tuple) -> None:
    """A setting that is one of choices."""
    if config[name] not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {shown}, not {config[name]!r}")


# Where run locks live: a fixed place, the same for cron, a login shell and systemd
# (TMPDIR differs between them, and PrivateTmp= gives a unit its own /tmp and /var/tmp).
# /run/lock is world-writable with the sticky bit on Debian and other systemd hosts.
LOCK_DIRS = ("/run/lock", "/var/lock", "/tmp")


def lock_path(config_path: str, suffix: str = "lock") -> str:
    """The lock file of a config, by its real path, in the first LOCK_DIRS that exists."""
    real = os.path.realpath(config_path)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    folder = next((d for d in LOCK_DIRS if os.path.isdir(d)), LOCK_DIRS[-1])
    return os.path.join(folder, f"ec2_to_ami-{digest}.{suffix}")
