"""Benchmarks against the local endpoint; each prints a Markdown table for the README."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.harness import Endpoint


def print_table(header: list[str], counts: list[int], bench: Callable) -> None:
    """Run bench(endpoint, count, workdir) for each count; print its rows under header."""
    endpoint = Endpoint().start()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory() as workdir:
        for count in counts:
            for row in bench(endpoint, count, Path(workdir)):
                print(row, flush=True)
    endpoint.stop()
