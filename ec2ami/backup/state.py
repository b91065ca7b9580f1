"""What a run leaves for monitoring: the STATE_FILE record and CloudWatch metrics."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ec2ami import clock
from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.backup.look import parse_time
from ec2ami.backup.tags import stamp
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import AVAILABLE
from ec2ami.output import RUN_ERRORS, print_json

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.look import Outcome
    from ec2ami.backup.plan import Image

log = logging.getLogger(__name__)


@dataclass
class LastRun:
    """The last backup run, as its STATE_FILE records it, and what --check makes of it."""

    path: str | None
    record: dict | None
    problem: str | None

    @classmethod
    def read(cls, path: str | None, rpo: float, now: datetime) -> LastRun:
        """Read STATE_FILE; a run that failed, or none within 2 x RPO_HOURS, is a problem."""
        if path is None:
            return cls(None, None, None)
        try:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
            finished = parse_time(record["finished"])
            code = record["exit_code"]
        except FileNotFoundError:
            return cls(path, None, f"no run recorded in {path}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            return cls(path, None, f"cannot read {path}: {err}")
        hours = (now - finished).total_seconds() / 3600
        if hours > 2 * rpo:
            return cls(path, record, f"the last run was {hours:.1f} h ago (2 x RPO: {2 * rpo:g} h)")
        if code != EXIT_OK:
            errors = record.get("errors") or [""]
            why = f": {errors[0]}" if errors[0] else ""
            more = f" (and {len(errors) - 1} more: --last-run)" if errors[1:] else ""
            return cls(path, record, f"the last run, {hours:.1f} h ago, exited {code}{why}{more}")
        return cls(path, record, None)

    def show(self, as_json: bool, now: datetime) -> int:
        """--last-run: the record, its error lines and where the whole log is; exit 0 if
        that run succeeded, 1 if it failed or none is recorded. No AWS call."""
        if as_json:
            print_json({"state_file": self.path, "record": self.record, "problem": self.problem})
        elif self.record is None:
            log.error("%s", self.problem or "STATE_FILE is None: runs are not recorded")
        else:
            done = self.record
            hours = (now - parse_time(done["finished"])).total_seconds() / 3600
            counts = [f"{done.get(k, '?')} {w}" for k, w in (
                ("servers_backed_up", "backed up"), ("servers_failed", "failed"),
                ("images_pruned", "pruned"))]  # fmt: skip
            print(
                f"Last run: finished {done['finished']} ({hours:.1f} h ago), exit "
                f"{done['exit_code']}: {', '.join(counts)}, {done.get('run_seconds', '?')} s"
            )
            for line in done.get("errors") or []:
                print(f"  {line}")
            where = done.get("log_file")
            print(f"Whole log: {where} (LOG_FILE)" if where else
                  "Whole log: LOG_FILE is None, so where the job's output went: cron's mail or "
                  "the file its line appends to (--show-cron), or journalctl -u <unit> "
                  "(docs/troubleshooting.md)")  # fmt: skip
        ok = self.record is not None and self.record.get("exit_code") == EXIT_OK
        return EXIT_OK if ok else EXIT_FAILED


def record_run(
    clients: Clients,
    config: BackupConfig,
    started: datetime,
    code: int,
    outcomes: Sequence[Outcome] = (),
    copies: Sequence[Outcome] = (),
    natives: Sequence[Image] = (),
) -> None:
    """After a run: write STATE_FILE, and put the run's metrics if METRICS_NAMESPACE is set.
    Neither changes the exit code; a failure is a warning (and the alarms see missing data)."""
    finished = clock.utc_now()
    seconds = (finished - started).total_seconds()
    counts = {
        "servers_backed_up": sum(1 for o in outcomes if not o.error),
        "servers_failed": sum(1 for o in outcomes if o.error),
        "images_pruned": sum(len(o.pruned) for o in [*outcomes, *copies]),
    }
    if code != EXIT_OK and not outcomes:  # stopped before it knew its servers: all failed
        counts["servers_failed"] = max(1, len(config.servers))
    if config.state_file:
        record = {
            "version": 1,
            "pool": config.pool,
            "schedule": config.schedule,
            "started": stamp(started),
            "finished": stamp(finished),
            "exit_code": code,
            **counts,
            "run_seconds": round(seconds, 1),
            "errors": RUN_ERRORS.kept(),  # for --check and --last-run: why it failed
            "log_file": config.log_file,
        }
        write_state(config.state_file, record)
    if config.metrics_namespace:
        ages: dict[str, float | None] = {o.name: None for o in outcomes}
        for image in natives:  # the previous backups: a failed server's age is the newest's
            if image.state == AVAILABLE and image.server in ages:
                age = (finished - image.created).total_seconds() / 3600
                known = ages[image.server]
                ages[image.server] = age if known is None else min(age, known)
        for out in outcomes:
            if not out.error:  # the new backup, taken at the run's start
                ages[out.name] = (finished - started.replace(microsecond=0)).total_seconds() / 3600
        run_dims = {"Schedule": config.schedule, "Pool": config.pool}
        data = age_metrics(config, ages, finished)
        data += [
            metric("ServersBackedUp", counts["servers_backed_up"], "Count", run_dims, finished),
            metric("ServersFailed", counts["servers_failed"], "Count", run_dims, finished),
            metric("ImagesPruned", counts["images_pruned"], "Count", run_dims, finished),
            metric("RunSeconds", seconds, "Seconds", run_dims, finished),
        ]
        put_metrics(clients, config, data)


def write_state(path: str, record: dict) -> None:
    """Replace STATE_FILE atomically; a failure is a warning."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=os.path.dirname(path) or ".",
            delete=False,
            prefix=".state-",
        ) as handle:
            json.dump(record, handle, indent=2)
        os.replace(handle.name, path)
    except OSError as err:
        log.warning("cannot write STATE_FILE %s: %s; --check will not see this run", path, err)


def metric(name: str, value: float, unit: str, dimensions: dict[str, str], when: datetime) -> dict:
    """One PutMetricData datum."""
    dims = [{"Name": k, "Value": v} for k, v in dimensions.items()]
    return {"MetricName": name, "Dimensions": dims, "Value": value, "Unit": unit, "Timestamp": when}


def age_metrics(config: BackupConfig, ages: dict[str, float | None], when: datetime) -> list[dict]:
    """BackupAgeHours per server that has a backup; one with none puts nothing, which the
    alarm's TreatMissingData=breaching counts as a breach."""
    return [
        metric(
            "BackupAgeHours",
            age,
            "None",
            {"Server": server, "Schedule": config.schedule, "Pool": config.pool},
            when,
        )
        for server, age in sorted(ages.items())
        if age is not None
    ]


def put_metrics(clients: Clients, config: BackupConfig, data: list[dict]) -> None:
    """PutMetricData, METRICS_PER_CALL at a time; a failure is a warning."""
    cloudwatch = clients.client("cloudwatch")
    for start in range(0, len(data), METRICS_PER_CALL):
        try:
            cloudwatch.put_metric_data(
                Namespace=config.metrics_namespace,
                MetricData=data[start : start + METRICS_PER_CALL],
            )
        except AWS_ERRORS as err:
            log.warning(
                "could not put metrics in %s: %s", config.metrics_namespace, error_text(err)
            )
            return


METRICS_PER_CALL = 1000  # PutMetricData takes at most 1000 metrics a request
