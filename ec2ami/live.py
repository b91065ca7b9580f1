"""While a run waits on EC2: one live line per server on a terminal, redrawn in place, or
a "still waiting" log line every HEARTBEAT_SECONDS anywhere else (cron, a pipe, a file).

The live lines are drawn on stderr below the log, only when stderr is a terminal whose
TERM is not "dumb", and not with -q. A log line erases them, is written, and they are
drawn again (output.ScreenHandler), so nothing interleaves. They are plain text: colour
is only the log's level names (output.py), which NO_COLOR turns off.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from ec2ami import output

log = logging.getLogger(__name__)

# At least this often a waiting run says so: at 3 a.m. a silent terminal looks hung.
HEARTBEAT_SECONDS = 30.0
REDRAW_SECONDS = 0.5

# A server's line, and whether that server is finished (a heartbeat leaves it out).
Rows = Callable[[], list[tuple[str, bool]]]


class Board:
    """The live lines on a terminal: drawn below the log, erased before each log line."""

    def __init__(self, stream: TextIO, title: str) -> None:
        self.stream, self.title, self.shown = stream, title, 0
        self.lock = threading.RLock()
        self.lines: list[str] = []

    def show(self, lines: list[str]) -> None:
        """Replace the lines on screen."""
        with self.lock:
            self.lines = lines
            self.erase()
            self.draw()

    def erase(self) -> None:
        """Take the lines off the screen: the cursor goes back to where they began."""
        if self.shown:
            self.stream.write(f"\x1b[{self.shown}F\x1b[J")
            self.shown = 0

    def draw(self) -> None:
        """Write the lines, each cut to the terminal's width so none wraps."""
        width = max(20, shutil.get_terminal_size().columns - 1)
        for line in self.lines:
            self.stream.write(line[:width] + "\n")
        self.stream.flush()
        self.shown = len(self.lines)


def wanted(stream: TextIO, quiet: bool) -> bool:
    """Live lines only on a terminal that can move its cursor, and not with -q."""
    return not quiet and stream.isatty() and os.environ.get("TERM", "") not in ("", "dumb")


@contextmanager
def progress(title: str, rows: Rows, quiet: bool) -> Iterator[None]:
    """Show rows live while the block runs (a terminal), or log the unfinished ones every
    HEARTBEAT_SECONDS (anything else). The rows are read from another thread: they must
    only read the run's state."""
    stream = sys.stderr
    board = Board(stream, title) if wanted(stream, quiet) else None
    stop = threading.Event()
    started = time.monotonic()

    def lines() -> list[str]:
        found = rows()
        done = sum(1 for _, finished in found if finished)
        head = f"{title}: {done}/{len(found)} done, {time.monotonic() - started:.0f} s"
        return [head, *(f"  {text}" for text, _ in found)]

    def keep_showing() -> None:
        beat = started + HEARTBEAT_SECONDS
        while not stop.wait(REDRAW_SECONDS if board else min(REDRAW_SECONDS, HEARTBEAT_SECONDS)):
            if board:
                board.show(lines())
            elif time.monotonic() >= beat:
                waiting = [text for text, finished in rows() if not finished]
                if waiting:
                    log.info("still waiting, %.0f s in: %s", time.monotonic() - started,
                             "; ".join(waiting))  # fmt: skip
                beat = time.monotonic() + HEARTBEAT_SECONDS

    output.SCREEN.board = board
    thread = threading.Thread(target=keep_showing, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        output.SCREEN.board = None
        if board:
            with board.lock:
                board.erase()
                stream.flush()
