"""The run's clock and id. Tests replace clock.utc_now, so callers use it through the module."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone


def utc_now() -> datetime:
    """The time now, in UTC."""
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    """An id that no other run has: TAG_RUN on every image this run makes."""
    return secrets.token_hex(8)
