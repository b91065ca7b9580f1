"""The strategy guide's diagrams: present, and rendered by mermaid's own CLI.

Rendering needs @mermaid-js/mermaid-cli (npm) and Chromium (Debian's `chromium`), which
the suite does not install; those tests are skipped without them. docs/development.md,
"The strategy guide's diagrams", has the one-off commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

STRATEGY = ROOT / "docs" / "strategy.md"
MMDC = os.environ.get("MMDC") or shutil.which("mmdc")
CHROMIUM = os.environ.get("PUPPETEER_EXECUTABLE_PATH") or shutil.which("chromium")
renderer = pytest.mark.skipif(
    not (MMDC and CHROMIUM), reason="needs mermaid-cli (MMDC or mmdc on PATH) and chromium"
)


def diagrams(markdown: str) -> list[str]:
    """The mermaid blocks of a Markdown text."""
    return re.findall(r"^```mermaid\n(.*?)^```", markdown, flags=re.M | re.S)


def render(markdown: Path, workdir: Path) -> subprocess.CompletedProcess:
    """Render every mermaid block of a Markdown file to SVG files in workdir."""
    config = workdir / "puppeteer.json"
    config.write_text(json.dumps({"executablePath": CHROMIUM, "args": ["--no-sandbox"]}))
    command = [MMDC, "-p", str(config), "-i", str(markdown), "-o", str(workdir / "out.md")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_strategy_guide_has_its_decision_pipeline_and_rto_diagrams():
    kinds = [block.split(None, 1)[0] for block in diagrams(STRATEGY.read_text())]
    assert kinds == ["flowchart", "flowchart", "gantt"]


@renderer
def test_every_diagram_of_the_strategy_guide_renders(tmp_path):
    result = render(STRATEGY, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(tmp_path.glob("out-*.svg"))) == 3


@renderer
def test_a_broken_diagram_does_not_render(tmp_path):
    broken = tmp_path / "broken.md"
    broken.write_text("# x\n\n```mermaid\nflowchart LR\n  a --> ((b\n```\n")
    assert render(broken, tmp_path).returncode != 0


def test_the_guides_numbers_are_the_benchmarks_and_the_calculators():
    """The strategies' prices and every measured figure are generated, so they cannot
    drift from docs/plan_dr.py or bench/RESULTS.md."""
    from tools.make_guide import render as render_guide

    text = STRATEGY.read_text()
    assert text == render_guide(text), "run: python tools/make_guide.py"
    assert "| fleet restore, N servers |" in text and "| 1000 |" in text
    assert "- For an RPO of a day and an RTO of 4 hours, surviving a region: backup and" in text


def test_the_guide_cites_what_the_reviewer_asked_for():
    text = STRATEGY.read_text()
    for fact in ("up to 72 hours", "about 28 minutes", "Region-level rule",
                 "file system integrity on the created image can't be guaranteed",
                 "Elastic Disaster Recovery", "hours, in AWS's terms"):  # fmt: skip
        assert fact in text, fact
    assert 'fully working low-capacity standby")' not in text


def test_the_docs_state_the_buckets_the_code_paces_to():
    """Every "<API> <size> then <rate>" in the docs is the package's table (ec2ami/facts.py),
    which tests/test_endpoint.py checks against EC2's throttling page."""
    from ec2ami.facts import request_bucket

    stated = re.compile(r"\b([A-Z][A-Za-z]+)(?:'s)?(?: request bucket)? \(?(\d+),? then (\d+)")
    found = [(m[1], int(m[2]), int(m[3])) for path in sorted((ROOT / "docs").glob("*.md"))
             for m in stated.finditer(path.read_text())]  # fmt: skip
    assert len(found) >= 4
    for api, size, rate in found:
        assert request_bucket(api) == (size, rate), api
