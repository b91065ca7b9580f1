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
