"""Data and configs for federated jobs on the tiny models of tests/conftest.py (imported by the
tests as ``federated_jobs``: a module name no other test folder uses)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import yaml

WORDS = {
    "positive": ["great", "lovely", "excellent", "happy"],
    "negative": ["awful", "terrible", "sad", "bad"],
    "neutral": ["okay", "average", "plain", "fine"],
}


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentiment from keywords: learnable by a tiny encoder in a few dozen steps."""
    rng = random.Random(seed)
    fillers = ["the film was", "my day was", "this meal is", "that song sounds"]
    rows = []
    for i in range(n):
        label = sorted(WORDS)[i % 3]
        rows.append(
            {"text": f"{rng.choice(fillers)} {rng.choice(WORDS[label])} number {i}", "label": label}
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def federated_config(tmp_path: Path, model_dir: Path, data: Path, out: Path, **federated) -> Path:
    raw = {
        "model": str(model_dir),
        "task": "classification",
        "method": "lora",
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(data), "validation": 0.2, "max_length": 32},
        "training": {
            "batch_size": 8,
            "learning_rate": 5e-3,
            "logging_steps": 5,
            "precision": "fp32",
            "num_threads": 1,
        },
        "output": str(out),
        "runner": "federated",
        "seed": 3,
        "federated": {
            "rounds": 2,
            "local_steps": 4,
            "sites": 3,
            "min_sites": 2,
            "wait_for_sites": 60,
            "round_timeout": 120,
            "simulation_cpus": 2,
            **federated,
        },
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def wait_until(check, timeout, procs, what):
    """Poll ``check`` until it holds; fail at once when one of ``procs`` (name: Popen) exits with
    an error, and after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for name, proc in procs.items():
            assert proc.poll() is None or proc.returncode == 0, (
                f"{name} exited with {proc.returncode}"
            )
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout} s")
