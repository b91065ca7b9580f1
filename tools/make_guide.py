"""Write the generated parts of docs/strategy.md: the strategies priced for the guide's
fleet (docs/plan_dr.py) and every number measured by the benchmarks (bench/RESULTS.md),
so the guide cannot drift from either.

    python tools/make_guide.py          (tests/test_docs.py keeps it current)

Each part sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; the text
around them is the guide's own.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "strategy.md"
RESULTS = ROOT / "bench" / "RESULTS.md"
# The guide's fleet for the strategies: 40 Linux servers of 100 GB, 2 % changed a day, two
# of them databases whose data a pilot light replicates.
FLEET = ["--servers", "40", "--gb", "100", "--change", "0.02", "--data-servers", "2"]
DECISIONS = [
    ("an RPO of a day and an RTO of 4 hours, surviving a region", ["26", "240"], []),
    ("the same, within one region", ["26", "240"], ["--same-region"]),
    ("an RPO of 1 hour and an RTO of 1 hour", ["1", "60"], []),
    ("the same, with no database replication of its own", ["1", "60"], ["--data-servers", "0"]),
    ("an RPO of 1 hour and an RTO of 10 minutes", ["1", "10"], []),
]


@functools.cache
def plan_dr() -> Any:
    """docs/plan_dr.py as a module (it is a script under docs/, not a package's)."""
    spec = importlib.util.spec_from_file_location("plan_dr", ROOT / "docs" / "plan_dr.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["plan_dr"] = module
    spec.loader.exec_module(module)
    return module


def run_plan(args: list[str]) -> str:
    """What docs/plan_dr.py prints for args."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        plan_dr().main(args)
    return out.getvalue()


def strategies() -> list[str]:
    """The strategies priced for the guide's fleet, and what the calculator picks."""
    first = run_plan([*FLEET, "--rpo-hours", "26", "--rto-minutes", "240"])
    lines = [line for line in first.splitlines() if line.startswith("|")]
    lines += ["", f"`python docs/plan_dr.py {' '.join(FLEET)} --rpo-hours H --rto-minutes M`:", ""]
    for words, (rpo, rto), more in DECISIONS:
        chosen = run_plan([*FLEET, "--rpo-hours", rpo, "--rto-minutes", rto, *more])
        pick = next(line for line in chosen.splitlines() if line.startswith(("Choose", "No ")))
        lines.append(f"- For {words}: {pick.removeprefix('Choose: ')}")
    return lines


def sections() -> dict[str, list[dict[str, str]]]:
    """bench/RESULTS.md's tables, by section title: each row as {header: cell}."""
    found: dict[str, list[dict[str, str]]] = {}
    title, header = "", []
    for line in RESULTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            title, header = line[3:].strip(), []
        elif line.startswith("|") and not set(line) <= set("|-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not header:
                header = cells
            else:
                found.setdefault(title, []).append(dict(zip(header, cells, strict=False)))
    return found


def measured() -> list[str]:
    """The benchmark figures the guide quotes, as the appendix's lines."""
    found = sections()
    fleet = found["fleet restore (--all) at RunInstances' pace"]
    restores = found["restore: the calls of single restores and kitchen-sink twins"]
    scale = found["backup at EC2's throttling limits"]
    busy = found["backup when the account's CreateImage bucket is busier than documented"]
    costs = found["--cost: the EBS direct API calls"]
    backups = found["backup: calls and wall time, first and steady runs"]
    plain = next(r for r in restores if r["server"] == "web01")
    twins = sorted(int(r["calls"]) for r in restores if r["server"] != "web01")
    lines = [
        "| fleet restore, N servers | wall time | floor (RunInstances at 5, then 2 a second, "
        "plus one boot) | ratio |",
        "|---|---|---|---|",
        *(f"| {r['N']} | {r['wall s']} s | {r['floor s']} s | {r['ratio']} |" for r in fleet),
        "",
        f"- A single restore: {plain['calls']} calls ({plain['server']}, WAIT "
        f"{plain['WAIT']}); kitchen-sink twins with two interfaces, a placement group and "
        f"load balancers: {twins[0]} to {twins[-1]} calls.",
    ]
    for r in backups:
        if r["run"] == "steady":
            lines.append(f"- A steady backup run of {r['N']} servers: {r['calls']} calls "
                         f"(budget {r['budget 3N+⌈N/10⌉+14']}).")  # fmt: skip
    for r in scale:
        lines.append(f"- {r['N']} servers against EC2's buckets, {r['run']} run: "
                     f"{r['wall s']} s, {r['ratio']} times the buckets' floor, "
                     f"{r['throttled']} calls refused.")  # fmt: skip
    for r in busy:
        lines.append(f"- {r['N']} servers, CreateImage's bucket busier than documented, "
                     f"{r['pacing']}: {r['refused calls']} calls refused, "
                     f"{r['ratio']} times the floor, "
                     f"{r['failed servers']} servers failed.")  # fmt: skip
    for r in costs:
        lines.append(f"- `--cost` over {r['N']} servers ({r['snapshots']} snapshots of 1 GiB "
                     f"volumes): {r['calls']} calls, {r['wall s']} s.")  # fmt: skip
    return lines


def render(text: str) -> str:
    """The guide with each generated part made anew."""
    for name, lines in (("strategies", strategies()), ("measured", measured())):
        pattern = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end: {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{GUIDE}: no <!-- generated: {name} --> part")
        body = "\n".join(lines)
        text = pattern.sub(lambda m, body=body: f"{m[1]}{body}\n{m[2]}", text)
    return text


def main() -> int:
    GUIDE.write_text(render(GUIDE.read_text(encoding="utf-8")), encoding="utf-8")
    print(GUIDE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
