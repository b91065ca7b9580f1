"""What a restore is while it runs: the plan of one server (Plan, its Attributes), its
progress (Restore), the run (Run), and how a server's failure is kept to that server.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ec2ami import clock
from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.contract import TOOL
from ec2ami.facts import FILTER_VALUES_MAX
from ec2ami.restore.config import RestoreError

if TYPE_CHECKING:
    from ec2ami.restore.recorded import Recorded


@contextlib.contextmanager
def one_server(restore: Restore, fleet: bool) -> Iterator[None]:
    """In a fleet, a server's failure is its own: record it (the report names it) and go
    on. A single restore raises it, as before any launch."""
    try:
        yield
    except (RestoreError, *AWS_ERRORS) as err:
        if not fleet:
            raise
        text = str(err) if isinstance(err, RestoreError) else f"AWS error: {error_text(err)}"
        restore.problems.append(text)


def server_token(token: str, server: str) -> str:
    """A server's own client token in a fleet, from the run's: the same run token and
    server give the same token, so a rerun with --client-token launches nothing twice."""
    digest = hashlib.sha256(f"{token}/{server}".encode()).hexdigest()
    return f"{TOOL}-{digest[:40]}"


@dataclass
class Attribute:
    """One reproduced attribute: what was recorded, what the launch gives it, and why."""

    name: str
    recorded: Any  # None: not recorded
    planned: Any
    origin: str  # "recorded", "overridden" (a setting), "default" (EC2's) or "drill" (left out)
    now: Any = None  # read back from the new instance after launch
    checked: bool = False


@dataclass
class Plan:
    """Everything the restore will do: RunInstances' parameters for each instance, then
    what RunInstances cannot do, and each attribute for the dry run and the check."""

    image: dict
    recorded: Recorded
    params: dict[str, Any]  # the first instance's RunInstances parameters
    elastic_ip: str | None  # the Elastic IP on the primary address (for the report)
    name: str
    warnings: list[str] = field(default_factory=list)
    eip_holder: str | None = None  # who held the Elastic IP when checked before launch
    attributes: list[Attribute] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)  # COUNT > 1: the rest
    elastic_ips: list[dict] = field(default_factory=list)  # {allocation, index, slot}
    source_dest_off: list[int] = field(default_factory=list)  # device indexes
    target_groups: list[dict] = field(default_factory=list)  # {arn, port}
    classic_load_balancers: list[str] = field(default_factory=list)
    dns_records: list[dict] = field(default_factory=list)
    holders: dict[str, str | None] = field(default_factory=dict)  # allocation -> holder
    original_alive: bool = False  # the recorded instance still exists: production is it
    # The settings that place the launch, for errors: DRILL_* in a drill.
    network_settings: tuple[str, str] = ("SUBNET_ID", "SECURITY_GROUP_IDS (or NETWORK_INTERFACES)")


@dataclass
class Restore:
    """One server's restore in a run: its backup, plan, instances, timings and result."""

    server: str
    image: dict | None = None
    plan: Plan | None = None
    ids: list[str] = field(default_factory=list)
    stage: str = "planned"  # planned, launched, running, ok, checking, done
    at: dict[str, float] = field(default_factory=dict)  # seconds into the run, by stage
    deadline: float = 0.0  # monotonic: WAIT_TIMEOUT_MINUTES after RunInstances accepted it
    allocations: list[dict] = field(default_factory=list)  # Elastic IPs to associate
    problems: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)  # a drill's DRILL_CHECK: command, status
    already: list[str] = field(default_factory=list)  # an earlier restore's live instances

    @property
    def planned(self) -> Plan:
        """The plan of a server that got one (only those are launched, set up and checked)."""
        if self.plan is None:
            raise RuntimeError(f"{self.server}: no plan")  # a defect, never an AWS answer
        return self.plan

    @property
    def error(self) -> str | None:
        """What went wrong, naming the instances launched, or None."""
        if not self.problems:
            return None
        text = "; ".join(self.problems)
        return f"after launching {', '.join(self.ids)}: {text}" if self.ids else text

    def fail(self, problem: str) -> None:
        """Record a failure; this server is done. The report names it at the end."""
        self.problems.append(problem)
        self.stage = "done"


class Run:
    """This run: when it began (monotonic and UTC), its client token, and whether it
    restores a fleet (log lines then name their server)."""

    def __init__(self, fleet: bool = False) -> None:
        self.start, self.utc = time.monotonic(), clock.utc_now()
        self.fleet, self.token = fleet, ""

    def since(self) -> float:
        """Seconds since the run began, to a tenth."""
        return round(time.monotonic() - self.start, 1)

    def prefix(self, restore: Restore) -> str:
        """ "<server>: " before a log line in a fleet."""
        return f"{restore.server}: " if self.fleet else ""


class LaunchError(Exception):
    """A failure after instances were launched."""


@contextlib.contextmanager
def failing(restore: Restore) -> Iterator[None]:
    """A failure after launch is this server's alone: record it, and the others go on."""
    try:
        yield
    except (*AWS_ERRORS, LaunchError) as err:
        restore.fail(str(err) if isinstance(err, LaunchError) else error_text(err))


def ids_of(restores: list[Restore]) -> list[str]:
    """The instance ids of several servers."""
    return [i for r in restores for i in r.ids]


def describe_launched(ec2: Any, ids: list[str]) -> list[dict]:
    """The launched instances as they are now (new ids may not be visible at once)."""
    found = []
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        filters = [{"Name": "instance-id", "Values": ids[start : start + FILTER_VALUES_MAX]}]
        reservations = ec2.describe_instances(Filters=filters).get("Reservations", [])
        found += [i for r in reservations for i in r["Instances"]]
    return found
