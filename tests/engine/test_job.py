"""Whole jobs on tiny models: losses fall, the run directory is complete, resume loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tunewright import get_plugin_manager
from tunewright import run_job as engine_run_job
from tunewright.config import load_config
from tunewright.runs import load_run


def job_config(
    model_dir: Path, data: Path, out: Path, task: str = "chat", method: str = "lora", **training
) -> dict:
    raw = {
        "model": str(model_dir),
        "task": task,
        "method": method,
        "data": {"train": str(data), "validation": 0.2, "max_length": 64},
        "training": {
            "max_steps": 30,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "logging_steps": 5,
            "precision": "fp32",
            **training,
        },
        "output": str(out),
        "seed": 7,
    }
    if method == "lora":
        raw["lora"] = {"r": 8, "alpha": 16}
    return raw


def run_job(raw: dict, **kwargs):
    pm = get_plugin_manager()
    messages = []
    result = engine_run_job(load_config(raw, pm.registries), pm, echo=messages.append, **kwargs)
    return result, messages


def test_chat_lora_job_learns_and_leaves_a_complete_run(tiny_llama_dir, chat_data, tmp_path):
    out = tmp_path / "run"
    result, messages = run_job(
        job_config(tiny_llama_dir, chat_data, out, eval_steps=15, precision="bf16")
    )
    assert result.global_step == 30
    results = json.loads((out / "eval.json").read_text())
    assert results["train"]["precision"] == "bf16"
    assert results["final"]["loss"] < results["baseline"]["loss"] - 0.5
    assert results["final"]["mean_token_accuracy"] > results["baseline"]["mean_token_accuracy"]
    assert results["primary_metric"] == "mean_token_accuracy"
    for name in (
        "config.yaml",
        "plugins.json",
        "metrics.jsonl",
        "report.png",
        "labels.json",
        "adapter/adapter_config.json",
        "tokenizer/tokenizer_config.json",
        "data/validation.jsonl",
    ):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert any("eval_loss" in r for r in rows)
    plugins = {p["name"]: p for p in json.loads((out / "plugins.json").read_text())}
    assert "methods:lora" in plugins["lora"]["used"] and plugins["lora"]["version"]
    assert any(m.startswith("baseline:") for m in messages) and any(
        m.startswith("step 30/30") for m in messages
    )
    # The tuned model reloads merged (fp32) and gives the figures the job recorded (bf16 base).
    run = load_run(out)
    features = [run.task.tokenize(e, run.tokenizer) for e in run.validation]
    batches = [
        run.task.collate(features[i : i + 8], run.tokenizer) for i in range(0, len(features), 8)
    ]
    assert run.task.metrics(run.model, batches)["loss"] == pytest.approx(
        results["final"]["loss"], rel=2e-3
    )


def test_classification_job_learns(tiny_bert_dir, classification_data, tmp_path):
    out = tmp_path / "run"
    raw = job_config(
        tiny_bert_dir,
        classification_data,
        out,
        task="classification",
        method="full",
        max_steps=150,
        learning_rate=1e-3,
    )
    run_job(raw)
    results = json.loads((out / "eval.json").read_text())
    assert results["final"]["accuracy"] > max(0.6, results["baseline"]["accuracy"] + 0.2)
    assert set(results["final"]) >= {"accuracy", "precision", "recall", "f1", "loss"}
    assert json.loads((out / "labels.json").read_text()) == ["negative", "neutral", "positive"]


def test_seeded_runs_repeat_exactly(tiny_llama_dir, chat_data, tmp_path):
    losses = []
    for name in ("a", "b"):
        out = tmp_path / name
        run_job(job_config(tiny_llama_dir, chat_data, out, max_steps=4, logging_steps=1))
        losses.append(
            [
                json.loads(line).get("loss")
                for line in (out / "metrics.jsonl").read_text().splitlines()
            ]
        )
    assert losses[0] == losses[1]


def test_existing_run_dir_is_not_overwritten_silently(tiny_llama_dir, chat_data, tmp_path):
    from tunewright import UsageError

    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(
        UsageError, match="exists and is not empty; it is not a tunewright run directory"
    ):
        run_job(job_config(tiny_llama_dir, chat_data, out))
    # --overwrite replaces only a folder tunewright made: this one holds the user's file
    with pytest.raises(UsageError, match="--overwrite replaces only a run directory"):
        run_job(job_config(tiny_llama_dir, chat_data, out), overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_run_directory(tiny_llama_dir, chat_data, tmp_path):
    from tunewright import RUN_MARKER, UsageError

    out = tmp_path / "run"
    run_job(job_config(tiny_llama_dir, chat_data, out, max_steps=2))
    assert (out / RUN_MARKER).is_file()
    (out / "note.txt").write_text("left by the first run")
    with pytest.raises(UsageError, match="pass --resume to continue it, --overwrite to replace it"):
        run_job(job_config(tiny_llama_dir, chat_data, out, max_steps=2))
    run_job(job_config(tiny_llama_dir, chat_data, out, max_steps=2), overwrite=True)
    assert not (out / "note.txt").exists() and (out / "adapter").is_dir()


def cli(*args, cwd=None, env=None, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "tunewright", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        **kwargs,
        timeout=600,
    )


@pytest.mark.slow
def test_killed_run_resumes_without_losing_a_step(tiny_llama_dir, chat_data, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            job_config(
                tiny_llama_dir,
                chat_data,
                out,
                max_steps=40,
                save_steps=5,
                save_total_limit=3,
                logging_steps=1,
            )
        )
    )
    checkpoints = out / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunewright", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (checkpoints / "checkpoint-15").is_dir():
            assert proc.poll() is None, f"training ended before checkpoint-15: {proc.stdout.read()}"
            assert time.monotonic() < deadline, "no checkpoint-15 within 300 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "adapter").exists()  # nothing that looks like a finished run
    killed_at = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert killed_at < 40
    for checkpoint in checkpoints.glob("checkpoint-*"):
        assert {p.name for p in checkpoint.iterdir()} == {
            "trainable.safetensors",
            "optimizer.pt",
            "rng.pt",
            "state.json",
        }

    resumed = cli("train", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoints / f'checkpoint-{killed_at}'}" in resumed.stderr
    steps = [
        json.loads(line)["step"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == list(range(1, 41))  # every step logged once: none lost, none twice
    assert not list(checkpoints.glob(".staging-*"))
    results = json.loads((out / "eval.json").read_text())
    assert (
        results["train"]["global_step"] == 40
        and results["final"]["loss"] < results["baseline"]["loss"]
    )
    # the resumed run continued the same schedule, data order and random state: its losses are
    # those of a run that was never interrupted
    whole = tmp_path / "whole"
    run_job(
        job_config(
            tiny_llama_dir,
            chat_data,
            whole,
            max_steps=40,
            save_steps=5,
            save_total_limit=3,
            logging_steps=1,
        )
    )

    def losses(folder):
        return [
            json.loads(line)["loss"]
            for line in (folder / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)
        ]

    assert losses(out) == pytest.approx(losses(whole), rel=1e-5)


def test_resume_without_checkpoint_is_a_usage_error(tiny_llama_dir, chat_data, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job_config(tiny_llama_dir, chat_data, tmp_path / "run")))
    result = cli("train", str(config), "--resume")
    assert result.returncode == 2 and "has no checkpoint to resume from" in result.stderr


def evaluations(out: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if r.get("eval_stage") == "training"]


def test_early_stopping_stops_and_keeps_the_best_checkpoint(
    tiny_bert_dir, classification_data, tmp_path
):
    out = tmp_path / "run"
    # a learning rate this high makes the validation loss rise after a few evaluations
    raw = job_config(
        tiny_bert_dir,
        classification_data,
        out,
        task="classification",
        method="full",
        max_steps=200,
        learning_rate=0.3,
        eval_steps=4,
        logging_steps=4,
        early_stopping={"patience": 2, "metric": "loss"},
    )
    result, _ = run_job(raw)
    assert result.global_step < 200
    evals = evaluations(out, "eval_loss")
    best = min(evals)
    assert evals[-1] > best and evals[-2] > best  # two evaluations without improvement
    final = json.loads((out / "eval.json").read_text())["final"]["loss"]
    assert final == pytest.approx(best, rel=1e-3)  # the best state was reloaded


def test_early_stopping_on_a_metric_where_lower_is_better(tiny_llama_dir, chat_data, tmp_path):
    """perplexity goes down when the model improves: its best is its lowest, whatever its name."""
    out = tmp_path / "run"
    raw = job_config(
        tiny_llama_dir,
        chat_data,
        out,
        max_steps=80,
        learning_rate=0.05,
        eval_steps=4,
        logging_steps=4,
        early_stopping={"patience": 2, "metric": "perplexity"},
    )
    run_job(raw)
    evals = evaluations(out, "eval_perplexity")
    final = json.loads((out / "eval.json").read_text())["final"]["perplexity"]
    assert len(evals) >= 3 and min(evals) < max(evals)
    assert final == pytest.approx(min(evals), rel=1e-3)


def test_a_metric_the_labels_do_not_give_is_refused_before_a_step_trains(
    tiny_bert_dir, classification_data, tmp_path
):
    """``mse`` is a classification metric, of float labels: with class labels the baseline says
    it is not there, and the job stops before training instead of at its first evaluation."""
    from tunewright import ConfigError

    raw = job_config(
        tiny_bert_dir,
        classification_data,
        tmp_path / "run",
        task="classification",
        early_stopping={"metric": "mse"},
    )
    with pytest.raises(
        ConfigError, match=r"reports no 'mse' for these labels; it reports .*accuracy"
    ):
        run_job(raw)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )
    assert "final" not in json.loads((tmp_path / "run" / "eval.json").read_text())


def test_unknown_early_stopping_metric_is_refused_before_training(
    tiny_llama_dir, chat_data, tmp_path
):
    from tunewright import ConfigError

    raw = job_config(
        tiny_llama_dir, chat_data, tmp_path / "run", early_stopping={"metric": "acuracy"}
    )
    with pytest.raises(
        ConfigError, match="training.early_stopping.metric: task 'chat' reports no metric 'acuracy'"
    ):
        run_job(raw)
    assert not (tmp_path / "run").exists()
