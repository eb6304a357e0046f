"""A sweep whose trials are federations: Flower's simulation on a tiny encoder, each round's
central held-out figure reported to Optuna as a step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

optuna = pytest.importorskip("optuna")
pytest.importorskip("flwr")

pytestmark = pytest.mark.slow

TUNEWRIGHT = [sys.executable, "-m", "tunewright"]
WORDS = {"positive": ["great", "lovely"], "negative": ["awful", "sad"]}


def test_each_trial_is_a_federation_reporting_every_round(tmp_path, tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    rows = [
        {"text": f"the film was {WORDS[label][i % 2]} number {i}", "label": label}
        for i in range(80)
        for label in [sorted(WORDS)[i % 2]]
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = {
        "model": str(tiny_bert_dir),
        "task": "classification",
        "method": "lora",
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(data), "validation": 0.2, "max_length": 32},
        "training": {"batch_size": 8, "logging_steps": 5, "precision": "fp32", "num_threads": 1},
        "output": str(tmp_path / "runs/fed"),
        "runner": "federated",
        "seed": 3,
        "federated": {
            "rounds": 2,
            "local_steps": 2,
            "sites": 2,
            "min_sites": 2,
            "simulation_cpus": 2,
        },
    }
    config, space = tmp_path / "job.yaml", tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump(job))
    space.write_text("training.learning_rate: {choice: [0.005, 0.01]}\n")
    study = tmp_path / "sweep"
    argv = ["sweep", str(config), "--space", str(space), "--sampler", "grid", "--study", str(study)]
    done = subprocess.run(
        [*TUNEWRIGHT, *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((study / "sweep.json").read_text())
    assert [row["state"] for row in summary["trials"]] == ["complete", "complete"]
    loaded = optuna.load_study(study_name="sweep", storage=f"sqlite:///{study / 'study.db'}")
    for trial in loaded.trials:
        assert sorted(trial.intermediate_values) == [1, 2]  # one report per round
        run = study / "trials" / f"trial-{trial.number:04d}"
        assert (run / "federated" / "rounds.jsonl").exists() and (run / "eval.json").exists()
    assert (study / "best.yaml").exists() and "best: trial" in done.stderr
