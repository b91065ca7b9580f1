"""Fixtures: the patched local EC2 endpoint, a small fleet on it, and script runners."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import botocore.loaders
import botocore.retries.standard
import botocore.session
import jsonschema
import pytest

from ec2ami import clock, polling
from localaws.endpoint import LINUX_AMI, SETTINGS, WINDOWS_AMI, Endpoint
from localaws.fleet import (
    REGION,
    ROOT,
    Fleet,
    add_elastic_ip,
    aws_env,
    build_network,
    drill_network,
    launch,
    write_config,
)


@pytest.fixture(scope="session", autouse=True)
def shared_service_models() -> None:
    """One botocore data loader for every in-process run, so each run's new session
    reads the EC2 and SSM models from memory, not from disk again. Only the tests
    share it: a real run is one process with one session."""
    loader = botocore.loaders.create_loader()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", lambda *_args, **_kw: loader)
        yield


@pytest.fixture(scope="session", autouse=True)
def shared_client_classes() -> None:
    """One client class per service for every in-process run. botocore builds a class
    with a method per operation (EC2 has about 700) for each client it makes, which is a
    fifth of an in-process run's own time; the class depends only on the service model,
    which the shared loader already shares. Each run still makes its own session and
    clients, with their own event handlers, credentials and retries."""
    original = botocore.client.ClientCreator._create_client_class
    made: dict[tuple[str, str], type] = {}

    def create_client_class(self: Any, service_name: str, service_model: Any) -> type:
        key = (service_name, service_model.api_version)
        if key not in made:
            made[key] = original(self, service_name, service_model)
        return made[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.client.ClientCreator, "_create_client_class", create_client_class)
        yield


THROTTLING_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException"}


@pytest.fixture(autouse=True)
def short_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's standard retries back off a hundredth as long after an injected error:
    the same attempts, the same codes retried, without a second's sleep each time.
    Throttling keeps its full backoff, which the emulated token buckets refill against."""
    original = botocore.retries.standard.ExponentialBackoff.delay_amount

    def delay_amount(self: Any, context: Any) -> float:
        delay = original(self, context)
        return delay if context.get_error_code() in THROTTLING_CODES else delay / 100

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", delay_amount)


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's runs keep their STATE_FILE under its own directory, not the user's."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def endpoint_server() -> Endpoint:
    server = Endpoint().start()
    yield server
    server.stop()


@pytest.fixture
def endpoint(endpoint_server: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """A clean endpoint for each test; images settle after a twentieth of a second.

    In-process runs poll every few tenths of a second instead of EC2's seconds, so a
    test waits for the endpoint's pending window, not for the product's poll schedule.
    """
    endpoint_server.reset()
    SETTINGS.pending_seconds = 0.05
    monkeypatch.setattr(polling, "POLL_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(polling, "POLL_MAX_SECONDS", 0.25)
    monkeypatch.setattr(polling, "POLL_WHILE_CREATING_FIRST_SECONDS", 0.25)
    monkeypatch.setattr(polling, "MISSED_GRACE_SECONDS", 0.5)
    CLOCK.last = None
    monkeypatch.setattr(clock, "utc_now", CLOCK)
    for key, value in aws_env(endpoint_server.url).items():
        monkeypatch.setenv(key, value)
    return endpoint_server


@pytest.fixture
def ec2(endpoint: Endpoint) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url)


@pytest.fixture
def iam(endpoint: Endpoint) -> Any:
    return boto3.client("iam", region_name=REGION, endpoint_url=endpoint.url)


@pytest.fixture
def fleet(ec2: Any, iam: Any) -> Fleet:
    """web01 and app01 (Linux, listed by id), win01 (Windows, found by its Backup tag)."""
    fleet = build_network(ec2, iam)
    launch(ec2, fleet, "web01", tags=[{"Key": "Env", "Value": "prod"}])
    launch(ec2, fleet, "app01")
    launch(ec2, fleet, "win01", WINDOWS_AMI, tags=[{"Key": "Backup", "Value": "yes"}])
    add_elastic_ip(ec2, fleet, "web01")
    return fleet


def backup_config(tmp_path: Path, fleet: Fleet, name: str = "backup.py", **overrides: Any) -> Path:
    """The standard test config: web01 and app01 by id, win01 by SELECT_TAGS."""
    settings = {
        "SERVERS": [
            {"name": "web01", "instance_id": fleet.instances["web01"]},
            {"name": "app01", "instance_id": fleet.instances["app01"]},
        ],
        "SELECT_TAGS": {"Backup": "yes"},
        "KEEP": 2,
        "WAIT_TIMEOUT_MINUTES": 1,
        **overrides,
    }
    return write_config(tmp_path / name, **settings)


class RunClock:
    """The backup's clock in tests: real time, but each run starts in a second of its own.

    AMI names carry the run's time to the second, and runs here follow each other
    within milliseconds; on EC2 they are hours apart. A subprocess run keeps the real
    clock, so the clock waits for it (a second or two at most) and steps past it.
    """

    def __init__(self) -> None:
        self.last: datetime | None = None

    def __call__(self) -> datetime:
        now = datetime.now(timezone.utc)
        if self.last is not None and now < self.last + timedelta(seconds=1):
            now = self.last + timedelta(seconds=1)
        self.last = now
        return now

    def before_subprocess(self) -> None:
        """Wait until real time has passed every in-process run, then step past the subprocess."""
        if self.last is not None:
            wait = (self.last + timedelta(seconds=1) - datetime.now(timezone.utc)).total_seconds()
            time.sleep(max(0.0, min(wait, 5.0)))
        self.last = datetime.now(timezone.utc) + timedelta(seconds=2)


CLOCK = RunClock()


def wait_for(condition: Any, what: str, seconds: float = 30.0) -> None:
    """Poll condition() until it is true; fail the test naming what did not happen in time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.02)


def script_command(script: str, config: Path | None, *args: str) -> list[str]:
    CLOCK.before_subprocess()
    command = [sys.executable, str(ROOT / script)]
    if config is not None:
        command += ["--config", str(config)]
    return command + list(args)


def run_process(
    script: str, config: Path | None, *args: str, **env: str
) -> subprocess.CompletedProcess:
    """Run a script the way cron or a person does: a subprocess with a config file.

    For what only a process shows: exit codes from the interpreter, no traceback,
    locks between processes, signals.
    """
    return subprocess.run(
        script_command(script, config, *args),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def run(script: str, config: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run a script's main(argv) in this process, against the same HTTP endpoint.

    Real argument parsing, config loading, botocore and HTTP; only the interpreter
    start is saved. stdout and stderr are captured apart, as a subprocess's are.
    """
    module = importlib.import_module(Path(script).stem)
    argv = (["--config", str(config)] if config is not None else []) + list(args)
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for handler in logging.getLogger().handlers[:]:  # main() set them up: LOG_FILE too
            logging.getLogger().removeHandler(handler)
            handler.close()
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def documented(result: subprocess.CompletedProcess, schema: str) -> Any:
    """stdout as the one JSON document --json promises, valid under docs/json's schema."""
    document = json.loads(result.stdout)
    found = json.loads((ROOT / "docs" / "json" / f"{schema}.schema.json").read_text())
    jsonschema.validate(document, found)
    return document


def managed(ec2: Any, server: str | None = None) -> list[dict]:
    """Managed images (of one server), disabled ones too, as DescribeImages reports them."""
    filters = [{"Name": "tag:ec2-to-ami:managed-by", "Values": ["ec2-to-ami"]}]
    if server:
        filters.append({"Name": "tag:ec2-to-ami:server", "Values": [server]})
    return ec2.describe_images(Owners=["self"], Filters=filters, IncludeDisabled=True)["Images"]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


ACCOUNT = "123456789012"


def all_snapshots(ec2) -> list[dict]:
    return ec2.describe_snapshots(Filters=[{"Name": "owner-id", "Values": [ACCOUNT]}])["Snapshots"]


def orphaned_managed_snapshots(ec2) -> list[str]:
    """Snapshots carrying the tool's marker that no registered image uses."""
    used = {
        m["Ebs"]["SnapshotId"]
        for image in ec2.describe_images(Owners=["self"], IncludeDisabled=True)["Images"]
        for m in image["BlockDeviceMappings"]
        if "Ebs" in m
    }
    return [
        s["SnapshotId"]
        for s in all_snapshots(ec2)
        if tags_of(s).get("ec2-to-ami:managed-by") and s["SnapshotId"] not in used
    ]


def available_by_server(ec2) -> dict[str, int]:
    counts: dict[str, int] = {}
    for image in managed(ec2):
        if image["State"] == "available":
            server = tags_of(image)["ec2-to-ami:server"]
            counts[server] = counts.get(server, 0) + 1
    return counts


def linux_servers(ec2: Any, iam: Any, count: int) -> list[dict]:
    """count Linux instances in a network of their own, as SERVERS entries srv00, srv01, ..."""
    fleet = build_network(ec2, iam)
    reservation = ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=count, MaxCount=count, SubnetId=fleet.subnet_id
    )
    return [
        {"name": f"srv{n:02d}", "instance_id": i["InstanceId"]}
        for n, i in enumerate(reservation["Instances"])
    ]


# --- Drills -------------------------------------------------------------------------


@pytest.fixture
def drilled(ec2, fleet, tmp_path):
    """The fleet backed up once (win01 by SELECT_TAGS Backup=yes), and a drill network."""
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    fleet.drill_subnet, fleet.drill_group = drill_network(ec2, fleet)
    SETTINGS.instance_pending_seconds = 0.2
    return fleet


def drill_config(tmp_path, fleet, **settings):
    return write_config(
        tmp_path / "drill.py", DRILL_SUBNET_ID=fleet.drill_subnet,
        DRILL_SECURITY_GROUP_IDS=[fleet.drill_group], DRILL_LOG=str(tmp_path / "drill.log"),
        **settings,
    )  # fmt: skip


def later(monkeypatch, minutes: float) -> None:
    """The tool's clock, minutes from now: a later drill, without waiting for it."""
    monkeypatch.setattr(clock, "utc_now", lambda: CLOCK() + timedelta(minutes=minutes))
