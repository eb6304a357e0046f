"""The wheel installs the four folders under the one name ``tunewright``, usable from anywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: the checkout's folders that install as tunewright's packages (engine, plugins, vision, edge)
PACKAGE_FOLDERS = sorted(
    set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
            "package-dir"
        ].values()
    )
)


@pytest.mark.slow
def test_installed_wheel_works_outside_the_checkout(tmp_path):
    # built from a copy of what the build reads, so that setuptools' build/ and egg-info land in
    # the temporary folder, not in the checkout
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    before = sorted(p.name for p in ROOT.iterdir())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert sorted(p.name for p in ROOT.iterdir()) == before
    wheel = next((tmp_path / "dist").glob("tunewright-*.whl"))
    # The venv sees the pinned stack of this interpreter but gets tunewright from the wheel alone.
    venv.create(tmp_path / "env", system_site_packages=True, with_pip=True)
    python = str(tmp_path / "env" / "bin" / "python")
    # --ignore-installed: this interpreter's own (editable) tunewright of the same version must not
    # count as already installed
    installed = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = (
        "import json, tunewright, tunewright.plugins.tasks, tunewright.edge, tunewright.vision, tunewright.cli;"
        "from importlib.resources import files;"
        "print(json.dumps({'file': tunewright.__file__, 'plugins': tunewright.plugins.tasks.__file__,"
        "'template': files('tunewright').joinpath('templates/config.yaml').is_file()}))"
    )
    result = subprocess.run(
        [python, "-c", probe], cwd=outside, capture_output=True, text=True, check=True, timeout=600
    )
    found = json.loads(result.stdout)
    site = str(tmp_path / "env")
    assert found["file"].startswith(site) and found["plugins"].startswith(site), (
        found,
        installed.stdout[-2000:],
    )
    assert found["template"]
    listed = subprocess.run(
        [str(tmp_path / "env" / "bin" / "tunewright"), "plugins", "--json"],
        cwd=outside,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["tasks"]["builtin"] and plugins["lora"]["builtin"]
    # no top-level `engine` or `plugins` package leaks into site-packages
    names = subprocess.run(
        [python, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True, timeout=600
    ).stdout
    assert "engine/" not in names and " plugins/" not in names


def test_every_package_folder_is_in_the_wheel():
    """A new sub-package (a folder with ``__init__.py``) must be listed in pyproject.toml, or the
    wheel silently lacks it while the editable install still works."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = setuptools["package-dir"]
    on_disk = set()
    for name, folder in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join([name, *relative.parts]))
    assert on_disk - set(setuptools["packages"]) == set()
    assert set(setuptools["packages"]) - on_disk == set()
