"""docs/plan_dr.py, the guide's calculator, against the guide's own worked example."""

from __future__ import annotations

import math

import pytest

from tests.conftest import ROOT
from tools import make_guide

plan_dr = make_guide.plan_dr()


def priced(servers: int = 20, **times) -> dict:
    fleet = plan_dr.Fleet(servers, 100, 0.02, 0, 2)
    found = plan_dr.options(fleet, plan_dr.Times(**times), plan_dr.PRICES)
    return {o.name: o for o in found}


def test_the_worked_example_costs_what_the_guide_says():
    """20 servers, 100 GB each, 2 % a day, 7 daily + 4 weekly + 12 monthly backups:
    $140 to $760 a month in one region; twice that with a DR copy, plus the transfer of
    each day's 40 GB of changes (30 x 40 GB x $0.02 = $24)."""
    options = priced()
    one = options["backup and restore"]
    assert (round(one.low), round(one.high)) == (140, 760)
    dr = options["backup and restore, copies in a DR region"]
    assert (round(dr.low), round(dr.high)) == (280 + 24, 1520 + 24)


def test_launching_a_thousand_servers_takes_eight_minutes_at_runinstances_pace():
    assert plan_dr.launch_minutes(1000) == pytest.approx((1000 - 5) / 2 / 60)
    assert plan_dr.launch_minutes(5) == 0


@pytest.mark.parametrize(
    ("args", "chosen"),
    [
        (["--rpo-hours", "26", "--rto-minutes", "240"], "backup and restore, copies in a DR"),
        (["--rpo-hours", "26", "--rto-minutes", "240", "--same-region"], "backup and restore,"),
        (["--rpo-hours", "1", "--rto-minutes", "60"], "pilot light"),  # the databases replicate
        (
            ["--rpo-hours", "1", "--rto-minutes", "60", "--data-servers", "0"],
            "AWS Elastic Disaster Recovery",
        ),  # nothing replicates its own data
        (["--rpo-hours", "1", "--rto-minutes", "10"], "multi-site active-active"),
    ],
)
def test_the_cheapest_strategy_that_meets_both_is_chosen(capsys, args, chosen):
    assert plan_dr.main(["--servers", "40", "--gb", "100", *args]) == 0
    assert f"Choose: {chosen}" in capsys.readouterr().out


def test_an_objective_nothing_meets_says_so(capsys):
    assert plan_dr.main(["--servers", "40", "--gb", "100", "--rpo-hours", "0",
                         "--rto-minutes", "1"]) == 1  # fmt: skip
    assert "No strategy meets" in capsys.readouterr().out


def test_windows_servers_lengthen_the_restore_by_their_boot():
    """100 GiB initialize in 5.7 minutes at 300 MiB/s, alongside the boot: a Linux boot
    (5 minutes) waits for them, a Windows boot (20) does not."""
    linux = priced()["backup and restore"].rto_minutes
    fleet = plan_dr.Fleet(20, 100, 0.02, 5, 2)
    windows = {o.name: o for o in plan_dr.options(fleet, plan_dr.Times(), plan_dr.PRICES)}
    assert windows["backup and restore"].rto_minutes - linux == pytest.approx(
        20 - 100 * 1024 / 300 / 60
    )


def test_one_server_comes_back_in_the_guides_48_minutes():
    """docs/strategy.md, section 4: detect 15, decide 15, running 2, status-ok 5 (the
    volumes initialize in 5.7 alongside), DNS 5, check 5, and the tool's second."""
    one = priced(servers=1)["backup and restore"].rto_minutes
    assert one == pytest.approx(15 + 15 + 2 + 100 * 1024 / 300 / 60 + 5 + 5)
    assert math.ceil(one) == 48
    assert "one Linux server is back in 48 minutes" in (ROOT / "docs" / "strategy.md").read_text()


def test_its_runinstances_pace_is_the_pacers():
    from ec2ami.facts import request_bucket

    assert request_bucket("RunInstances") == (plan_dr.LAUNCH_BURST, plan_dr.LAUNCH_RATE)
