"""What both commands show a person: the command line's shared options, tables, the drill
verdict, and logging."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ec2ami import __version__
from ec2ami.settings import beside


def command_line(
    prog: str, description: str, config: str, script: str | None
) -> argparse.ArgumentParser:
    """A parser with the options both commands share: --config, --version, -v and -q."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=beside(script, config), help="config file")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    noise.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def verified_summary(value: str | None) -> str:
    """A drill's TAG_VERIFIED value for a listing: when, and ok or failed ("-": never)."""
    if not value:
        return "-"
    when, _, rest = value.partition(" ")
    return f"{when.replace('T', ' ').rstrip('Z')[:16]} {rest.split(' ', 1)[0]}".strip()


def print_table(rows: Sequence[Any], columns: Sequence[str] | None = None) -> None:
    """Print rows as left-aligned columns: tuples of cells, or dicts read by columns."""
    if columns is not None:
        rows = [tuple(str(row.get(c, "")) for c in columns) for row in rows]
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def setup_logging(
    args: argparse.Namespace, log_file: str | None = None, stamped: bool = True
) -> None:
    """Log to stderr (and LOG_FILE), with the time if stamped; keep botocore quiet unless -vv."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format=("%(asctime)s " if stamped else "") + "%(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("botocore").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)
