"""``tunewright export RUN_DIR`` on a run the engine trained: the thin layer over ``export_bundle``."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

#: the command line of the interpreter running the tests (not whichever `tunewright` is on PATH)
TUNEWRIGHT = [sys.executable, "-m", "tunewright"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert_dir):
    work = tmp_path_factory.mktemp("run")
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "great", "awful", "fun", "dull"]
    with open(work / "train.jsonl", "w") as handle:
        for _ in range(80):
            handle.write(
                json.dumps(
                    {
                        "text": " ".join(rng.choice(words) for _ in range(6)),
                        "label": rng.choice(["neg", "pos"]),
                    }
                )
                + "\n"
            )
    (work / "config.yaml").write_text(f"""model: {tiny_bert_dir}
task: classification
method: lora
lora: {{r: 4, alpha: 8}}
data:
  train: train.jsonl
  validation: 0.25
training: {{epochs: 1, max_steps: 3, batch_size: 8, learning_rate: 1.0e-3}}
output: runs/tiny
""")
    subprocess.run(
        [*TUNEWRIGHT, "train", "config.yaml"],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return work


@pytest.mark.slow
def test_export_a_trained_run_and_use_the_bundle(tiny_run):
    done = subprocess.run(
        [*TUNEWRIGHT, "export", "runs/tiny", "--out", "bundle", "--quantize", "int8", "--json"],
        cwd=tiny_run,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tiny_run / "bundle" / "manifest.json").read_text())
    assert (manifest["method"], manifest["task"], manifest["task_kind"]) == (
        "lora",
        "classification",
        "sequence_classification",
    )
    assert manifest["labels"] == ["neg", "pos"]
    # the gate's tuned figures come from the task's own metrics: the run's final evaluation (the
    # merged model's loss may differ from the adapter's in the last float digits)
    assert manifest["parity"]["tuned_metrics"] == pytest.approx(
        manifest["run"]["eval"]["final"], abs=1e-4
    )
    verify = subprocess.run(
        [*TUNEWRIGHT, "edge", "verify", "bundle"],
        cwd=tiny_run,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"]
    run = subprocess.run(
        [*TUNEWRIGHT, "edge", "run", "bundle", "good film"],
        cwd=tiny_run,
        capture_output=True,
        text=True,
        timeout=120,
    )
    from tunewright.edge.runtime import load_bundle

    assert run.returncode == 0, run.stderr
    [device], [here] = (
        json.loads(run.stdout),
        load_bundle(tiny_run / "bundle").predict(["good film"]),
    )
    assert device["label"] == here["label"] and device["score"] == pytest.approx(
        here["score"], abs=1e-5
    )


@pytest.mark.slow
def test_failed_gate_exits_1_and_writes_nothing(tiny_run):
    # a negative threshold demands that the bundle beat the tuned model: it cannot, so the gate fails
    done = subprocess.run(
        [*TUNEWRIGHT, "export", "runs/tiny", "--out", "gated", "--threshold", "-1"],
        cwd=tiny_run,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    assert (
        "parity gate failed" in done.stderr and "accuracy (higher is better): tuned" in done.stderr
    )
    assert not (tiny_run / "gated").exists()
    assert not [p for p in tiny_run.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.slow
def test_unknown_quantizer_exits_2_with_the_registered_names(tiny_run):
    done = subprocess.run(
        [*TUNEWRIGHT, "export", "runs/tiny", "--out", "b", "--quantize", "int3"],
        cwd=tiny_run,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2
    assert (
        "unknown quantizer 'int3'" in done.stderr
        and "int8-block" in done.stderr
        and "auto" in done.stderr
    )


@pytest.mark.slow
def test_export_refuses_an_out_folder_holding_the_users_files(tiny_run):
    # the run's own folder holds the user's data and config: exporting over it must not touch them
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    for extra in ([], ["--overwrite"]):
        done = subprocess.run(
            [*TUNEWRIGHT, "export", "runs/tiny", "--out", ".", *extra],
            cwd=tiny_run,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 2, done.stderr
        assert "is not a tunewright bundle" in done.stderr and "nothing was changed" in done.stderr
        assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before
    assert (tiny_run / "runs" / "tiny" / "adapter").is_dir()
