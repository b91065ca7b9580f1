"""The least-privilege IAM policies each config needs (--print-iam-policy)."""

from __future__ import annotations

from typing import Any


def allow(sid: str, action: Any, resource: Any, condition: dict | None = None) -> dict:
    """One Allow statement."""
    made = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        made["Condition"] = condition
    return made
