"""The runtime in a fresh virtual environment that has no torch and no transformers.

A real venv (not ``--system-site-packages``) into which ``tunewright[runtime]`` is installed as a
device would: the core and the runtime extra, from pip's cache or PyPI. Slow (mostly pip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bundles_run_in_a_fresh_venv_without_torch(tmp_path, classifier_bundle, generator_bundle):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [f"{REPO}[runtime]"], check=True, env=env, timeout=900)

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

    # The full command line works there too: built-ins that need torch are listed as unavailable.
    tunewright = str(env_dir / "bin" / "tunewright")
    verified = subprocess.run([tunewright, "edge", "verify", str(classifier_bundle)], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=600)
    assert verified.returncode == 0, verified.stderr
    plugins = {p["name"]: p for p in json.loads(subprocess.run(
        [tunewright, "plugins", "--json"], capture_output=True, text=True, env=env, check=True, timeout=300).stdout)}
    assert "torch" in plugins["tasks"]["unavailable"] and not plugins["edge-commands"].get("unavailable")

