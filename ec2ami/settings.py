"""Read a config module (a plain Python file of UPPER_CASE settings) before any AWS call."""

from __future__ import annotations

import os
import sys
from typing import Any

from ec2ami.errors import ConfigError


def read_settings(path: str) -> dict[str, Any]:
    """Run a config file and return its UPPER_CASE settings, not yet checked."""
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
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


def beside(script: str | None, name: str) -> str:
    """The path of name beside the running script or .pyz (the working directory if None)."""
    return os.path.join(os.path.dirname(os.path.abspath(script)) if script else os.getcwd(), name)


def command_of(script: str | None) -> list[str]:
    """How cron runs this same tool again: the interpreter and the script, .pyz or command."""
    return [sys.executable, os.path.abspath(script or sys.argv[0])]
