"""The client-side pacer holds calls to an EC2 token bucket's burst and refill rate."""

from __future__ import annotations

import time

from ec2_to_ami import PACER_SLACK, Pacer


def test_pacer_lets_the_burst_through_then_holds_to_the_refill_rate():
    pacer = Pacer(size=5 + PACER_SLACK, rate=50.0)
    started = time.monotonic()
    for _ in range(5):
        pacer.wait()
    assert time.monotonic() - started < 0.05  # the burst, less the slack
    for _ in range(10):
        pacer.wait()
    assert time.monotonic() - started >= 10 / 50 - 0.01  # then 50 per second
