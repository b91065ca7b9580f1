"""The client-side pacer holds calls to an EC2 token bucket's burst and refill rate."""

from __future__ import annotations

import types

import pytest

from ec2ami import aws
from ec2ami.aws import PACER_SLACK, Pacer


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A fake clock for the pacer: sleeping moves it on, and nothing else does."""
    fake = types.SimpleNamespace(now=100.0, slept=[])
    fake.monotonic = lambda: fake.now

    def sleep(seconds: float) -> None:
        fake.slept.append(seconds)
        fake.now += seconds

    fake.sleep = sleep
    monkeypatch.setattr(aws, "time", fake)
    return fake


def test_pacer_lets_the_burst_through_then_holds_to_the_refill_rate(clock):
    pacer = Pacer(size=5 + PACER_SLACK, rate=50.0)
    for _ in range(5):
        pacer.wait()
    assert clock.now == 100.0  # the burst, less the slack, waits for nothing
    for _ in range(10):
        pacer.wait()
    assert clock.now - 100.0 == pytest.approx(10 / 50)  # then 50 per second


def test_pacer_refills_while_no_call_is_made(clock):
    pacer = Pacer(size=5 + PACER_SLACK, rate=50.0)
    for _ in range(5):
        pacer.wait()
    clock.now += 1.0  # a second without calls refills the whole burst
    for _ in range(5):
        pacer.wait()
    assert clock.now == 101.0


def paced(limits=None) -> types.SimpleNamespace:
    """A client's event system with only the pacer's handlers on it."""
    from botocore.hooks import HierarchicalEmitter

    client = types.SimpleNamespace(meta=types.SimpleNamespace(events=HierarchicalEmitter()))
    aws.pace(client, "ec2", limits)
    return client


def launches_before_a_wait(clock, limits=None) -> int:
    """How many RunInstances a paced client sends before it first waits for a token."""
    client = paced(limits)
    sent = 0
    while sum(clock.slept) == 0:
        client.meta.events.emit("before-call.ec2.RunInstances", params={"body": {"MaxCount": 1}})
        sent += 1
    return sent - 1


def test_run_instances_is_paced_to_its_documented_bucket_or_to_a_raised_one(clock):
    assert launches_before_a_wait(clock) == 5 - PACER_SLACK  # 5, then 2 a second
    clock.slept.clear()
    assert launches_before_a_wait(clock, {"RunInstances": (20, 8.0)}) == 20 - PACER_SLACK


def test_the_resource_bucket_holds_a_launch_of_many_instances(clock):
    client = paced({"RunInstances": (100, 100.0)})
    client.meta.events.emit("before-call.ec2.RunInstances", params={"body": {"MaxCount": 998}})
    assert sum(clock.slept) == 0  # 1,000 instances at once, less the slack
    client.meta.events.emit("before-call.ec2.RunInstances", params={"body": {"MaxCount": 10}})
    assert sum(clock.slept) == pytest.approx(10 / 2)  # then 2 instances a second


@pytest.mark.parametrize("script", ["ec2_to_ami.py", "ami_to_ec2.py"])
def test_a_bad_ec2_api_limits_setting_is_a_config_error(tmp_path, script):
    from tests.conftest import run, write_config

    which = ({"SERVERS": [{"name": "web01", "instance_id": "i-0123456789abcdef0"}]}
             if script == "ec2_to_ami.py" else {"SERVER": "web01"})  # fmt: skip
    config = write_config(tmp_path / "c.py", EC2_API_LIMITS={"RunInstances": "fast"}, **which)
    result = run(script, config, "--dry-run")
    assert result.returncode == 2 and "EC2_API_LIMITS must be a dict of EC2 API name" in (
        result.stderr
    )


def refused(code: str = "RequestLimitExceeded") -> tuple:
    """A needs-retry event's response: EC2's answer to a call that found its bucket empty."""
    return (types.SimpleNamespace(status_code=503), {"Error": {"Code": code}})


def test_a_refused_call_halves_the_pace_which_comes_back_as_calls_go_through(clock):
    pacer = Pacer(size=2 + PACER_SLACK, rate=10.0)
    pacer.throttled(response=refused())  # the account's bucket is busier than documented
    assert pacer.rate == 5.0 and pacer.tokens <= 0
    pacer.throttled(response=refused())
    pacer.throttled(response=(None, {"Error": {"Code": "InvalidAMIID.NotFound"}}))  # not one
    assert pacer.rate == 2.5
    pacer.wait()
    assert clock.slept[-1] == pytest.approx(1 / 2.5)  # the next call waits at the slower pace
    clock.now += 30.0  # 30 s later: back to the documented pace, and no faster
    pacer.wait()
    assert pacer.rate == 10.0
    for _ in range(200):
        pacer.throttled(response=refused())
    assert pacer.rate == pytest.approx(10.0 * aws.ADAPTIVE_FLOOR)  # never stops


def test_a_backup_in_a_busier_account_slows_down_instead_of_failing(ec2, iam, tmp_path, endpoint):
    """CreateImage's bucket far below the documented one (other work in the account): every
    server is backed up, and EC2 refuses few calls, since the pacer slows down."""
    from tests.conftest import linux_servers, managed, run, write_config

    servers = linux_servers(ec2, iam, 12)
    config = write_config(tmp_path / "b.py", SERVERS=servers, KEEP=2, WAIT_TIMEOUT_MINUTES=1)
    endpoint.throttle(busier={"CreateImage": (3, 2.0)})
    result = run("ec2_to_ami.py", config)
    endpoint.throttle(False)
    assert result.returncode == 0, result.stderr
    assert len(managed(ec2)) == 12
    refusals = endpoint.count("CreateImage", ok=False)
    assert 0 < refusals <= 5  # 2 or 3 here; 9 when the pacer does not slow down


@pytest.mark.parametrize(
    ("env", "mode"),
    [({}, "standard"), ({"AWS_RETRY_MODE": "legacy"}, "standard"),
     ({"AWS_RETRY_MODE": "adaptive"}, "adaptive")],
)  # fmt: skip
def test_retries_are_standard_unless_the_operator_asks_for_adaptive(monkeypatch, env, mode):
    """botocore's adaptive mode is the operator's choice (bench/throttled.py measures it);
    its default, legacy, never: it retries fewer errors, with a different backoff."""
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _, config = aws.base_session(None, "eu-west-1")
    assert config.retries["mode"] == mode
