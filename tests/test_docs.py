"""The README stays in step with the code (datasette's two meta-tests)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tunewright import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [
    (name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "tunewright_spec")
]


@pytest.mark.parametrize("name,fn", HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_is_in_the_readme_with_its_arguments(name, fn):
    arguments = ", ".join(inspect.signature(fn).parameters)
    assert f"`{name}({arguments})`" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name,fn", HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_has_a_docstring_and_a_test(name, fn):
    assert len(inspect.getdoc(fn) or "") > 40
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_docs.py")
    assert name in tests, f"no test mentions the hook {name}"


def test_readme_test_command_is_what_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci[-1] in (ROOT / "README.md").read_text()
