"""How backups are named: NAME_FORMAT, the AMI name rules EC2 enforces, and server names.

Checked once for the config's servers before any AWS call, and again at run time for the
servers SELECT_TAGS finds by their Name tag.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from ec2ami.contract import TAG_VALUE_MAX
from ec2ami.errors import ConfigError
from ec2ami.facts import AMI_NAME_BAD_CHARS, AMI_NAME_CHARS, AMI_NAME_RE

NAME_FIELDS = {"server", "schedule", "time", "instance_id"}
# NAME_FORMAT must name runs this far apart differently: while KEEP holds a backup, a
# later run may not need its name.
NAME_REPEATS = {"a minute": timedelta(minutes=1), "an hour": timedelta(hours=1),
                "a day": timedelta(days=1), "a month": timedelta(days=31),
                "a year": timedelta(days=365)}  # fmt: skip


class Named(Protocol):
    """What a name is made of: a server (a ServerSpec) and its instance."""

    @property
    def name(self) -> str: ...

    @property
    def instance_id(self) -> str: ...


class Sample(NamedTuple):
    """A stand-in server, to try NAME_FORMAT on."""

    name: str
    instance_id: str


def check_name_format(fmt: Any, schedule: str, specs: Sequence[Named]) -> None:
    """NAME_FORMAT names each server's backups apart, at least a minute apart, validly."""
    if not isinstance(fmt, str):
        raise ConfigError(f"NAME_FORMAT must be a string, not {fmt!r}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
    except ValueError as err:
        raise ConfigError(f"NAME_FORMAT is not a valid format string: {err}") from None
    if "time" not in fields:
        raise ConfigError("NAME_FORMAT must contain {time}, so each backup has its own name")
    if not fields & {"server", "instance_id"}:
        raise ConfigError(
            "NAME_FORMAT must contain {server} or {instance_id}, so each server's names differ"
        )
    unknown = fields - NAME_FIELDS
    if unknown:
        raise ConfigError(f"NAME_FORMAT: unknown field {{{sorted(unknown)[0]}}}")
    sample = Sample("server", "i-0123456789abcdef0")
    when = datetime(2026, 1, 2, 3, 4, 5)
    try:
        first = render_name(fmt, sample, schedule, when)
        later = {
            apart: render_name(fmt, sample, schedule, when + delta)
            for apart, delta in NAME_REPEATS.items()
        }
    except (ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"NAME_FORMAT does not render: {err}") from None
    for apart, name in later.items():
        if name == first:
            raise ConfigError(
                f"NAME_FORMAT gives runs {apart} apart the same name ({first!r}), and EC2 "
                "refuses a name in use: its {time} needs at least minutes, with the day, "
                "month and year, e.g. {time:%Y%m%d-%H%M}"
            )
    check_server_names(fmt, schedule, specs or [sample], when)


def check_server_names(fmt: str, schedule: str, specs: Sequence[Named], when: datetime) -> None:
    """Each listed server's AMI name is valid, and no two servers share one."""
    seen: dict[str, str] = {}
    for spec in specs:
        problem = name_problem(fmt, spec, schedule, when)
        if problem:
            raise ConfigError(f"NAME_FORMAT: {problem}")
        name = render_name(fmt, spec, schedule, when)
        if name in seen:
            raise ConfigError(
                f"NAME_FORMAT gives servers {seen[name]!r} and {spec.name!r} the same AMI "
                f"name {name!r} (EC2 allows only {AMI_NAME_CHARS}); rename one"
            )
        seen[name] = spec.name


def server_name_problem(name: str) -> str | None:
    """Why a server name cannot be one, or None: a control character (it would forge log
    lines), or more than a tag value holds (TAG_SERVER keeps the name whole)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{name!r} contains a control character"
    if len(name) > TAG_VALUE_MAX:
        return f"is {len(name)} characters long; a server name has at most {TAG_VALUE_MAX}"
    return None


def name_problem(fmt: str, spec: Named, schedule: str, when: datetime) -> str | None:
    """Why a server's name, or the AMI name it gets, is not one EC2 takes, or None."""
    problem = server_name_problem(spec.name)
    if problem:
        return f"server name {problem}"
    name = render_name(fmt, spec, schedule, when)
    if AMI_NAME_RE.match(name):
        return None
    return f"the AMI name for {spec.name!r} would be {name!r} ({len(name)} characters), not 3-128"


def render_name(fmt: str, server: Named, schedule: str, when: datetime) -> str:
    """Render an AMI name, replacing characters EC2 does not allow with '-'."""
    name = fmt.format(
        server=server.name, schedule=schedule, time=when, instance_id=server.instance_id
    )
    return AMI_NAME_BAD_CHARS.sub("-", name)
