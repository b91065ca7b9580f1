"""The shape of the code and its docs: one source for each concept, modules a maintainer can
read in one sitting, and a README for users with a reference that cannot fall behind."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.make_reference import TARGET, reference

PACKAGE = ROOT / "ec2ami"
MODULES = sorted(PACKAGE.rglob("*.py"))
MODULE_LINES_MAX, FUNCTION_LINES_MAX, SHARED_RUN = 600, 60, 6


def functions(path: Path) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_reads_in_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MODULE_LINES_MAX, f"{path.name} has {lines} lines: two concepts?"
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} says not what it is"


def test_a_long_function_says_why_it_is_long():
    unexplained = [
        f"{path.relative_to(PACKAGE)}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path in MODULES
        for fn in functions(path)
        if fn.end_lineno - fn.lineno + 1 > FUNCTION_LINES_MAX
        and "Long because" not in (ast.get_docstring(fn) or "")
    ]
    assert not unexplained


def test_nothing_is_defined_twice():
    """No two functions or classes in the package have the same body under any name."""
    seen: dict[str, str] = {}
    twice = []
    for path in MODULES:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                body = ast.dump(ast.Module(body=node.body, type_ignores=[]))
                where = f"{path.relative_to(PACKAGE)}:{node.name}"
                if body in seen and len(node.body) > 1:
                    twice.append(f"{where} = {seen[body]}")
                seen.setdefault(body, where)
    assert not twice


def code_runs(paths: list[Path]) -> dict[tuple[str, ...], str]:
    """Every run of SHARED_RUN code lines (no blanks, comments or imports), by where it is."""
    runs: dict[tuple[str, ...], str] = {}
    for path in paths:
        lines = [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith(("#", "import ", "from "))
        ]
        lines = [line for line in lines if not re.fullmatch(r"[\w, ]*,?|\)|\]|\}", line)]
        for start in range(len(lines) - SHARED_RUN + 1):
            runs.setdefault(tuple(lines[start : start + SHARED_RUN]), path.name)
    return runs


def test_the_backup_and_the_restore_share_no_block_of_code():
    backup = code_runs([*sorted((PACKAGE / "backup").glob("*.py")), PACKAGE / "iam/backup.py"])
    restore = code_runs([*sorted((PACKAGE / "restore").glob("*.py")), PACKAGE / "iam/restore.py"])
    shared = [f"{backup[run]} ~ {restore[run]}: {run[0]}" for run in set(backup) & set(restore)]
    assert not shared, "put what both need in one shared module"


def test_the_reference_lists_every_setting_and_flag_as_they_are_now():
    assert TARGET.read_text() == reference(), "run: python tools/make_reference.py"


def test_the_readme_is_for_users():
    readme = (ROOT / "README.md").read_text()
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    assert len(readme.encode()) <= 16 * 1024
    assert "## Restore one server now" in readme.splitlines()[:30]
    install = headings.index("## Install on an admin host")
    assert all(install < i for i, h in enumerate(headings) if "test" in h.lower())
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", readme):
        assert (ROOT / link).exists(), f"README links to {link}, which is not there"
