"""Which disaster recovery strategy for a fleet: the calculator behind docs/strategy.md.

For a fleet described by its servers, the data written on each, the share of it that
changes a day, and the RPO and RTO it must meet, it prices AWS's strategies (backup and
restore, with and without a copy in a second region; pilot light; warm standby;
multi-site active-active; and AWS Elastic Disaster Recovery), estimates each one's RTO
and RPO, and picks the cheapest that meets both.

    python docs/plan_dr.py --servers 40 --gb 100 --change 0.02 --rpo-hours 26 --rto-minutes 240
    python docs/plan_dr.py --servers 40 --gb 100 --rpo-hours 1 --rto-minutes 60 --windows 10

Every price is a flag, with its source below; the defaults are us-east-1 list prices.
Every time is a flag too, and the defaults for detection, decision, boot and checks are
example values: replace them with your drills' (DRILL_LOG). Standard library only.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

HOURS_A_MONTH = 730  # AWS's pricing pages bill a month as 730 hours

# us-east-1 list prices, USD.
PRICES = {
    # EBS snapshots, standard tier, per GB-month (https://aws.amazon.com/ebs/pricing/).
    "snapshot": 0.05,
    # EBS gp3 volumes, per GB-month (https://aws.amazon.com/ebs/pricing/).
    "gp3": 0.08,
    # Data transfer out of us-east-1 to another AWS region, per GB (AWS Price List,
    # AWSDataTransfer, transferType "InterRegion Outbound", e.g. USE1-USW2-AWS-Out-Bytes).
    "transfer": 0.02,
    # An m5.large, Linux, on demand, per hour (AWS Price List, AmazonEC2, "$0.096 per On
    # Demand Linux m5.large Instance Hour"). Windows and larger types cost more: give yours.
    "instance": 0.096,
    # AWS Elastic Disaster Recovery, per replicating source server per hour (AWS Price List,
    # AWSElasticDisasterRecovery, DRS-Replication "Normal-Replication", USD 0.028).
    "drs": 0.028,
}

# The guide's retention: 7 daily, 4 weekly and 12 monthly backups of the same volumes form
# one chain of 23 snapshots with 20 gaps that hold changes, spanning 330 days
# (docs/strategy.md, "A worked example").
GAPS, SPAN_DAYS = 20, 330
# The fastest provisioned rate for volume initialization, MiB/s (RunInstances'
# VolumeInitializationRate, 100-300: the EC2 API Reference, EbsBlockDevice).
INIT_MIB_S = 300
# RunInstances' request bucket: 5, then 2 a second (ec2ami/facts.py, from the EC2
# Developer Guide, "Request throttling for the Amazon EC2 API").
LAUNCH_BURST, LAUNCH_RATE = 5, 2.0


@dataclass
class Fleet:
    servers: int
    gb: float  # written per server
    change: float  # the share of it that changes a day
    windows: int  # how many of the servers run Windows (they boot slower)
    data_servers: int  # servers whose data a pilot light replicates live (databases)


@dataclass
class Times:
    detect: float = 15.0  # minutes: your monitoring (an example value)
    decide: float = 15.0  # your runbook (an example value)
    running: float = 2.0  # launch to running (an example value: DRILL_LOG has yours)
    boot_linux: float = 5.0  # launch to status-ok (reported by AWS's DRS documentation as
    boot_windows: float = 20.0  # about 5 and 20 minutes; not confirmed here: drill yours)
    dns: float = 5.0  # the record's TTL
    check: float = 5.0  # the application check
    scale_up: float = 10.0  # a warm standby's scale-up (an example value)
    run_hours: float = 1.0  # a backup run's length, and a copy's to the DR region


@dataclass
class Option:
    name: str
    low: float  # USD a month, the lower bound of the stored data
    high: float  # the upper bound
    rto_minutes: float
    rpo_hours: float
    protects: str  # what it survives


def snapshots_gb(fleet: Fleet) -> tuple[float, float]:
    """What the fleet's kept snapshots store, lower and upper bound (the guide's model)."""
    daily = fleet.gb * fleet.change
    low = fleet.gb + GAPS * daily
    high = fleet.gb + min(SPAN_DAYS * daily, SPAN_DAYS * fleet.gb)
    return fleet.servers * low, fleet.servers * high


def launch_minutes(servers: int) -> float:
    """Launching a fleet at RunInstances' pace, in minutes; the boots overlap."""
    return max(0, servers - LAUNCH_BURST) / LAUNCH_RATE / 60


def options(fleet: Fleet, times: Times, prices: dict[str, float]) -> list[Option]:
    """Every strategy, priced and timed for this fleet."""
    low, high = (gb * prices["snapshot"] for gb in snapshots_gb(fleet))
    month = HOURS_A_MONTH
    changes = fleet.servers * fleet.gb * fleet.change * 30  # GB written a month
    data_changes = fleet.data_servers * fleet.gb * fleet.change * 30
    copy = changes * prices["transfer"]  # each day's changes, copied to the DR region
    boot = times.boot_windows if fleet.windows else times.boot_linux
    init = fleet.gb * 1024 / INIT_MIB_S / 60  # the largest volume, at the fastest rate
    human = times.detect + times.decide
    # The terms of docs/strategy.md's RTO budget: the volumes initialize while the OS
    # boots, so the longer of the two counts.
    launched = human + launch_minutes(fleet.servers) + times.running
    restore = launched + max(boot, init) + times.dns + times.check
    replicas = fleet.data_servers * (prices["instance"] * month + fleet.gb * prices["gp3"])
    volumes = fleet.servers * fleet.gb * prices["gp3"]
    standby = fleet.servers * prices["instance"] * month / 2  # one size down: half the price
    full = fleet.servers * prices["instance"] * month
    drs_stage = volumes + fleet.servers * (fleet.gb + 7 * fleet.gb * fleet.change) * prices[
        "snapshot"]  # fmt: skip
    drs = fleet.servers * prices["drs"] * month + drs_stage + copy
    interval = 24 + times.run_hours
    return [
        Option("backup and restore", low, high, restore, interval, "an instance or a zone"),
        Option(
            "backup and restore, copies in a DR region",
            2 * low + copy,
            2 * high + copy,
            restore,
            interval + times.run_hours,
            "a region",
        ),
        Option(
            "pilot light",
            2 * low + copy + replicas + data_changes * prices["transfer"],
            2 * high + copy + replicas + data_changes * prices["transfer"],
            launched + boot + times.dns + times.check,  # the data needs no initializing
            0.0 if fleet.data_servers else interval,
            "a region",
        ),
        Option(
            "warm standby",
            2 * low + copy + replicas + volumes + standby,
            2 * high + copy + replicas + volumes + standby,
            human + times.scale_up + times.dns,
            0.0,
            "a region",
        ),
        Option(
            "multi-site active-active",
            low + full + volumes + copy,
            high + full + volumes + copy,
            times.dns,
            0.0,
            "a region, with no outage",
        ),
        Option(
            "AWS Elastic Disaster Recovery",
            drs + low,
            drs + high,
            human + times.running + boot + times.dns + times.check,
            1 / 3600,
            "a region",
        ),
    ]


def choose(
    found: list[Option], rpo_hours: float, rto_minutes: float, region: bool
) -> Option | None:
    """The cheapest strategy (by the middle of its bounds: where a fleet lies between them
    only --cost tells) that meets the RPO and the RTO, and survives a region's loss if
    asked."""
    meeting = [o for o in found if o.rpo_hours <= rpo_hours and o.rto_minutes <= rto_minutes
               and (not region or "region" in o.protects)]  # fmt: skip
    return min(meeting, key=lambda o: o.low + o.high, default=None)


def rpo_words(hours: float) -> str:
    """An RPO in words."""
    if hours == 0:
        return "the replication lag"
    return "seconds" if hours < 0.01 else f"{hours:g} h"


def table(found: list[Option]) -> list[str]:
    """The options as a Markdown table."""
    lines = ["| strategy | USD a month | RTO | RPO | survives |", "|---|---|---|---|---|"]
    for o in found:
        rpo = rpo_words(o.rpo_hours)
        lines.append(f"| {o.name} | ${o.low:,.0f} to ${o.high:,.0f} | "
                     f"{math.ceil(o.rto_minutes)} min | "
                     f"{rpo} | {o.protects} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, required=True)
    parser.add_argument("--gb", type=float, required=True, help="data written per server")
    parser.add_argument("--change", type=float, default=0.02, help="share changed a day")
    parser.add_argument("--rpo-hours", type=float, required=True)
    parser.add_argument("--rto-minutes", type=float, required=True)
    parser.add_argument("--windows", type=int, default=0, help="how many run Windows")
    parser.add_argument("--data-servers", type=int, default=2,
                        help="servers whose data a pilot light replicates live")  # fmt: skip
    parser.add_argument("--same-region", action="store_true",
                        help="protect against an instance or zone only, not a region")  # fmt: skip
    for name, value in PRICES.items():
        parser.add_argument(f"--price-{name}", type=float, default=value)
    for name, value in vars(Times()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)
    args = parser.parse_args(argv)
    if not 0 <= args.change <= 1 or args.servers < 1 or args.gb <= 0:
        parser.error("--servers at least 1, --gb above 0, --change from 0 to 1")
    fleet = Fleet(args.servers, args.gb, args.change, args.windows, args.data_servers)
    times = Times(**{k: getattr(args, k) for k in vars(Times())})
    prices = {k: getattr(args, f"price_{k}") for k in PRICES}
    found = options(fleet, times, prices)
    print("\n".join(table(found)))
    chosen = choose(found, args.rpo_hours, args.rto_minutes, not args.same_region)
    print()
    if chosen is None:
        print(f"No strategy meets an RPO of {args.rpo_hours:g} h and an RTO of "
              f"{args.rto_minutes:g} min: loosen one, or replicate the data itself.")  # fmt: skip
        return 1
    print(f"Choose: {chosen.name}, ${chosen.low:,.0f} to ${chosen.high:,.0f} a month, RTO about "
          f"{math.ceil(chosen.rto_minutes)} min, RPO {rpo_words(chosen.rpo_hours)}.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
