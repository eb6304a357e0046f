"""The README stays in step with the code (datasette's two meta-tests)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tunewright import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [
    (name, fn)
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
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
                    "hookimpl" in ast.unparse(decorator) for decorator in inner.decorator_list
                ):
                    found.setdefault(inner.name, []).append(f"{path.name}::{node.name}")
    return found


HOOK_TESTS = _hook_tests()


@pytest.mark.parametrize("name,fn", HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_has_a_docstring_and_a_test(name, fn):
    """datasette's rule: a test named test_hook... implements the hook as a plugin would."""
    assert len(inspect.getdoc(fn) or "") > 40
    assert HOOK_TESTS.get(name), f"no test_hook... test implements the hook {name}"


def test_readme_test_command_is_what_ci_runs():
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci[-1] in (ROOT / "README.md").read_text()


def _config_table() -> dict[str, str]:
    """``key -> default cell`` of the README's config reference."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Config reference") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            rows[cells[0].strip("`")] = cells[1]
    return rows


def _schema_keys() -> dict[str, object]:
    """Every key of the config schema, ``data.*`` and ``training.*`` one by one, with its default
    (``...`` for a required key)."""
    from pydantic import BaseModel

    from tunewright.config import JobConfig

    keys: dict[str, object] = {}
    for name, field in JobConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, inner in annotation.model_fields.items():
                keys[f"{name}.{sub}"] = (
                    ... if inner.is_required() else inner.get_default(call_default_factory=True)
                )
        else:
            keys[name] = (
                ... if field.is_required() else field.get_default(call_default_factory=True)
            )
    return keys


def _documents(cell: str, default: object) -> bool:
    text = cell.strip("`")
    if default is ...:
        return text == "required"
    if default is None:
        return text == "none"
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, str):
        return text == default
    if isinstance(default, (int, float)):
        return float(text) == default
    import yaml

    return yaml.safe_load(text) == default


def test_the_config_table_documents_every_schema_key_with_its_default():
    table, schema = _config_table(), _schema_keys()
    table.pop("<method>")
    assert sorted(set(schema) - set(table)) == [], "schema keys the README's config table lacks"
    assert sorted(set(table) - set(schema)) == [], "README config keys the schema does not have"
    wrong = {
        key: (table[key], schema[key]) for key in schema if not _documents(table[key], schema[key])
    }
    assert wrong == {}, "README default (left) differs from the schema's (right)"


def test_the_version_is_the_changelogs_newest_release():
    import re

    import tunewright

    pyproject = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(
        1
    )
    newest = re.search(r"(?m)^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text()).group(1)
    assert tunewright.__version__ == pyproject == newest


def test_each_deprecated_form_the_changelog_names_is_adapted_in_compat():
    """The changelog's table of 0.1.0 forms and tunewright.compat's list stay in step."""
    from tunewright import compat

    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"{compat.REMOVED_IN} may refuse them" in changelog
    forms = {
        "factory(run_dir, config)": "factory(run_dir, config)",
        "runner(job)": "runner(job)",
        "greater_is_better": "greater_is_better",
        "max_length, labels=None)": "max_length, labels=None)",
        "no `validate`": "no ``validate``",
    }
    for in_changelog, in_compat in forms.items():
        assert in_changelog in changelog and in_compat in compat.__doc__
