"""The runtime in a fresh virtual environment that has no torch and no transformers.

A real venv (not ``--system-site-packages``) into which ``tunewright[runtime]`` is installed as a
device would: the core and the runtime extra, from pip's cache or PyPI. Slow (mostly pip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tunewright.edge.runtime.bundle import manifest_digest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two bundles exported, then a venv installed from the index
def test_bundles_run_in_a_fresh_venv_without_torch(tmp_path, classifier_bundle, generator_bundle):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"{REPO}[runtime]"], check=True, env=env, timeout=900)

    def run(*args, check=True):
        return subprocess.run(
            [str(python), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=check,
            timeout=600,
        )

    probe = run(
        "-c",
        "import importlib.util as u; print([m for m in ('torch', 'transformers', 'optimum') "
        "if u.find_spec(m)])",
    )
    assert probe.stdout.strip() == "[]", "the fresh venv must not have torch or transformers"

    # what the device computes is what this process computes with the same bundle
    from tunewright.edge.runtime import load_bundle

    label = json.loads(
        run("-m", "tunewright.edge.runtime", "run", str(classifier_bundle), "a great film").stdout
    )
    here = load_bundle(classifier_bundle).predict(["a great film"])
    assert label[0]["label"] == here[0]["label"]
    assert label[0]["scores"] == pytest.approx(here[0]["scores"], abs=1e-5)
    assert json.loads(
        run("-m", "tunewright.edge.runtime", "verify", str(classifier_bundle)).stdout
    )["ok"]
    figures = json.loads(
        run("-m", "tunewright.edge.runtime", "bench", str(classifier_bundle), "--runs", "5").stdout
    )
    assert (figures["runs"], figures["tokens"]) == (5, 16)
    assert figures["min_ms"] <= figures["p50_ms"] <= figures["p95_ms"]

    reply = json.loads(
        run(
            "-m",
            "tunewright.edge.runtime",
            "run",
            str(generator_bundle),
            "hi",
            "--max-new-tokens",
            "5",
        ).stdout
    )
    assert reply[0]["reply"] == load_bundle(generator_bundle).generate(
        [{"role": "user", "content": "hi"}], max_new_tokens=5
    )
    assert json.loads(run("-m", "tunewright.edge.runtime", "verify", str(generator_bundle)).stdout)[
        "ok"
    ]
    figures = json.loads(
        run(
            "-m", "tunewright.edge.runtime", "bench", str(generator_bundle), "--new-tokens", "8"
        ).stdout
    )
    assert (figures["new_tokens"], figures["prompt_tokens"]) == (8, 32)
    assert figures["ms_per_token"] == pytest.approx(1000 / figures["tokens_per_second"])

    # The full command line works there too: built-ins that need torch are listed as unavailable.
    tunewright = str(env_dir / "bin" / "tunewright")
    verified = subprocess.run(
        [tunewright, "edge", "verify", str(classifier_bundle)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert verified.returncode == 0, verified.stderr
    plugins = {
        p["name"]: p
        for p in json.loads(
            subprocess.run(
                [tunewright, "plugins", "--json"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
                timeout=300,
            ).stdout
        )
    }
    assert "torch" in plugins["tasks"]["unavailable"] and not plugins["edge-commands"].get(
        "unavailable"
    )
    assert sorted(plugins["edge-runtimes"]["registered"]["edge_runtimes"]) == [
        "genai-generator",
        "generator",
        "image-classifier",
        "text-classifier",
    ]

    # A third-party plugin brings a runtime for a kind of its own; on the device the plugin
    # manager finds it (the built-ins that need torch skipped), and the built-in bundles still run.
    site = Path(
        run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    (site / "toy_edge_runtime.py").write_text(TOY_PLUGIN)
    dist = site / "toy_edge_runtime-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-edge-runtime\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tunewright]\ntoy = toy_edge_runtime\n")
    (dist / "RECORD").write_text("")
    toy = tmp_path / "toy-bundle"
    shutil.copytree(classifier_bundle, toy)
    manifest = json.loads((toy / "manifest.json").read_text())
    manifest.update(runtime="toy-runtime", task_kind="toy_kind")
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (toy / "manifest.json").write_text(json.dumps(manifest))
    assert json.loads(
        run("-m", "tunewright.edge.runtime", "run", str(toy), "hi", "there").stdout
    ) == [{"echo": "hi"}, {"echo": "there"}]
    label = json.loads(
        run("-m", "tunewright.edge.runtime", "run", str(classifier_bundle), "a great film").stdout
    )
    assert label[0]["label"] == here[0]["label"]
    missing = run(
        "-m",
        "tunewright.edge.runtime",
        "run",
        str(generator_bundle).replace("generator", "nothing"),
        "x",
        check=False,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


TOY_PLUGIN = """
import numpy as np
from tunewright import hookimpl


class Echo:
    runtime, task_kind, generates = "toy-runtime", "toy_kind", False

    def __init__(self, folder, manifest, *, threads=None):
        self.manifest, self.labels = manifest, manifest.get("labels")

    def logits(self, inputs):
        return np.zeros((len(inputs["input_ids"]), 2), np.float32)

    def teacher_forced_logits(self, prompt, continuation):
        raise NotImplementedError

    def benchmark_inputs(self, *, batch=1, tokens=16):
        return {"input_ids": np.zeros((batch, tokens), np.int64)}

    def stream(self, inputs, **options):
        raise NotImplementedError

    def run(self, inputs, **options):
        return [{"echo": text} for text in inputs]


@hookimpl
def register_edge_runtimes(register):
    register("echo", Echo)
"""
