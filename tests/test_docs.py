"""The README stays in step with the code (datasette's two meta-tests)."""

from __future__ import annotations

import ast
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


def _hook_tests() -> dict[str, list[str]]:
    """Hook name -> the ``test_hook...`` tests whose body implements it (a function of that name
    decorated with ``hookimpl``, in the test or in a class inside it)."""
    found: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook")):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef) and any(
                        "hookimpl" in ast.unparse(decorator) for decorator in inner.decorator_list):
                    found.setdefault(inner.name, []).append(f"{path.name}::{node.name}")
    return found


HOOK_TESTS = _hook_tests()


@pytest.mark.parametrize("name,fn", HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_has_a_docstring_and_a_test(name, fn):
    """datasette's rule: a test named test_hook... implements the hook as a plugin would."""
    assert len(inspect.getdoc(fn) or "") > 40
    assert HOOK_TESTS.get(name), f"no test_hook... test implements the hook {name}"


def test_readme_test_command_is_what_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci[-1] in (ROOT / "README.md").read_text()
