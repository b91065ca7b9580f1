"""What both commands show: the command line's shared options, tables, the --json
documents (and the error document when a run has none), logging to the terminal and to
LOG_FILE, and the run's error lines kept for STATE_FILE."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import Any, ClassVar, NoReturn, TextIO

from ec2ami import __version__
from ec2ami.errors import EXIT_FAILED, EXIT_USAGE
from ec2ami.settings import beside


class Parser(argparse.ArgumentParser):
    """argparse, keeping its last usage error for --json's error document."""

    usage_error: str | None = None

    def error(self, message: str) -> NoReturn:
        Parser.usage_error = message
        super().error(message)


def command_line(
    prog: str, description: str, config: str, script: str | None
) -> argparse.ArgumentParser:
    """A parser with the options both commands share: --config, --version, -v and -q."""
    parser = Parser(prog=prog, description=description)
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


def parse_command_line(
    parse: Callable[[list[str] | None, str | None], argparse.Namespace],
    argv: list[str] | None,
    script: str | None,
) -> argparse.Namespace:
    """Start a run afresh and parse its command line; a usage error with --json prints the
    error document too, then exits 2 as argparse does."""
    RUN_ERRORS.reset()
    try:
        return parse(argv, script)
    except SystemExit as done:
        if done.code == EXIT_USAGE:
            json_failure("--json" in (sys.argv[1:] if argv is None else argv), EXIT_USAGE)
        raise


def print_json(document: Any) -> None:
    """Print one JSON document: with --json, the only thing on stdout (docs/json.md)."""
    print(json.dumps(document, indent=2, default=str))
    sys.stdout.flush()
    RUN_ERRORS.json_printed = True


@contextmanager
def capture_if(capture: bool) -> Iterator[list[str]]:
    """With capture, collect what the block prints as lines (for --json, the dry run's
    actions in the words the person would read); otherwise let it print."""
    lines: list[str] = []
    if not capture:
        yield lines
        return
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        yield lines
    lines.extend(buffer.getvalue().splitlines())


def human(as_json: bool) -> TextIO:
    """Where text for a person goes: stdout, or stderr when --json keeps stdout for the
    document."""
    return sys.stderr if as_json else sys.stdout


def run_to_exit(as_json: bool, command: Callable[[], int]) -> int:
    """Run a parsed command and return its exit code: a Ctrl-C the command did not sum up
    itself ends in one line and exit 1, never a traceback; then json_failure."""
    try:
        code = command()
    except KeyboardInterrupt:
        logging.getLogger("ec2ami").error("interrupted: nothing more was done")
        code = EXIT_FAILED
    return json_failure(as_json, code)


def json_failure(as_json: bool, code: int) -> int:
    """With --json, a run that printed no document but failed prints the error document,
    {"error", "errors", "exit_code"}, so stdout is never empty; return code."""
    if as_json and code and not RUN_ERRORS.json_printed:
        lines = RUN_ERRORS.lines or [Parser.usage_error or f"exited {code}"]
        print_json({"error": lines[0], "errors": lines, "exit_code": code})
    return code


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
    """Log to stderr at -q's or -v's level, and to LOG_FILE at least at INFO: under cron, -q
    keeps the mail to warnings and errors while the file keeps each run's whole story.
    botocore stays quiet unless -vv."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    form = ("%(asctime)s " if stamped else "") + "%(levelname)s %(message)s"
    SCREEN.setStream(sys.stderr)
    SCREEN.setLevel(level)
    coloured = sys.stderr.isatty() and not os.environ.get("NO_COLOR")  # no-color.org
    SCREEN.setFormatter(Coloured(form) if coloured else logging.Formatter(form))
    handlers: list[logging.Handler] = [SCREEN, RUN_ERRORS]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        handlers[-1].setLevel(min(level, logging.INFO))
        handlers[-1].setFormatter(logging.Formatter(form))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if old not in (SCREEN, RUN_ERRORS):
            old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(min(h.level or level for h in handlers))
    logging.getLogger("botocore").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if args.verbose > 1 else logging.WARNING)


class ScreenHandler(logging.StreamHandler):
    """The log on stderr; while live lines are shown (live.py) each log line goes above
    them: they are erased, the line written, and they are drawn again."""

    board: Any = None  # live.Board while one is shown

    def emit(self, record: logging.LogRecord) -> None:
        board = self.board
        if board is None:
            super().emit(record)
            return
        with board.lock:
            board.erase()
            super().emit(record)
            board.draw()


class Coloured(logging.Formatter):
    """Level names in colour, for a terminal (never with NO_COLOR, nor into a file)."""

    COLOURS: ClassVar[dict[str, str]] = {
        "WARNING": "\x1b[33m",
        "ERROR": "\x1b[31m",
        "CRITICAL": "\x1b[31m",
    }

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = self.COLOURS.get(record.levelname)
        if colour:
            text = text.replace(record.levelname, f"{colour}{record.levelname}\x1b[0m", 1)
        return text


class ErrorLines(logging.Handler):
    """The run's ERROR lines, kept for STATE_FILE so --check can say why the last run
    failed without the log (the first MAX_KEPT; the count of the rest)."""

    MAX_KEPT = 20

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < self.MAX_KEPT:
            self.lines.append(record.getMessage())
        else:
            self.dropped += 1

    json_printed = False  # whether the run printed its --json document

    def kept(self) -> list[str]:
        """The lines so far (and how many more there were)."""
        return self.lines + ([f"... and {self.dropped} more"] if self.dropped else [])

    def reset(self) -> None:
        """A new run (main is called more than once in a process by the tests)."""
        self.lines, self.dropped, self.json_printed = [], 0, False
        Parser.usage_error = None


RUN_ERRORS = ErrorLines()
SCREEN = ScreenHandler(sys.stderr)
