"""The tree passes its own linters: ruff (lint and format) over the checkout, mypy over
``engine/`` and ``edge/runtime/``, each as configured in pyproject.toml and pinned in the dev
extra. A finding fails the test with the tool's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tool(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "--output-format=concise", "."), ("ruff", "format", "--check", ".")],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(command):
    out = tool(*command)
    assert out.returncode == 0, f"{' '.join(command)}:\n{out.stdout}{out.stderr}"


@pytest.mark.timeout(600)
def test_mypy():
    # the files it checks and how strictly are in [tool.mypy]
    out = tool("mypy")
    assert out.returncode == 0, f"mypy:\n{out.stdout}{out.stderr}"


def test_no_tracked_file_refers_to_the_developers_shared_folder():
    """A user has the checkout alone: a comment that sends them to ``../shared`` sends them
    nowhere."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    here = Path(__file__).resolve()
    needle = "../" + "shared"
    found = []
    for name in filter(None, listed.stdout.split("\0")):
        path = ROOT / name
        if path.resolve() == here or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [
            f"{name}:{number}" for number, line in enumerate(text.splitlines(), 1) if needle in line
        ]
    assert found == []
