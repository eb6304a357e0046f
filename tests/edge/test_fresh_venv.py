"""The runtime in a fresh virtual environment that has no torch and no transformers.

A real venv (not ``--system-site-packages``): the runtime extra's packages come from pip's cache
or PyPI, tunewright itself is installed with ``--no-deps``. Slow (a minute or two, mostly pip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# importing the ``tunewright`` package itself needs these (config, plugin manager); they are small
ENGINE_IMPORT_DEPS = ["pluggy>=1.5", "pydantic>=2.6", "pyyaml>=6.0", "click>=8.1"]


def runtime_requirements() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["optional-dependencies"]["runtime"]) + ENGINE_IMPORT_DEPS


@pytest.mark.slow
def test_bundles_run_in_a_fresh_venv_without_torch(tmp_path, classifier_bundle, generator_bundle):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + runtime_requirements(), check=True, env=env, timeout=900)
    subprocess.run(pip + ["--no-deps", str(REPO)], check=True, env=env, timeout=600)

    def run(*args, check=True):
        return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              check=check, timeout=600)

    probe = run("-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'optimum') "
                      "if u.find_spec(m)])")
    assert probe.stdout.strip() == "[]", "the fresh venv must not have torch or transformers"

    label = json.loads(run("-m", "tunewright.edge.runtime", "run", str(classifier_bundle), "a great film").stdout)
    assert label[0]["label"] in ("neg", "pos")
    assert json.loads(run("-m", "tunewright.edge.runtime", "verify", str(classifier_bundle)).stdout)["ok"]
    assert json.loads(run("-m", "tunewright.edge.runtime", "bench", str(classifier_bundle), "--runs", "5").stdout)["p50_ms"] > 0

    reply = json.loads(run("-m", "tunewright.edge.runtime", "run", str(generator_bundle), "hi",
                           "--max-new-tokens", "5").stdout)
    assert "reply" in reply[0]
    assert json.loads(run("-m", "tunewright.edge.runtime", "verify", str(generator_bundle)).stdout)["ok"]
    figures = json.loads(run("-m", "tunewright.edge.runtime", "bench", str(generator_bundle), "--new-tokens", "8").stdout)
    assert figures["tokens_per_second"] > 0 and figures["peak_memory_mb"] > 0

