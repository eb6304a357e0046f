"""Tiny chat jobs for the experiments plugin's tests (sweeps and trackers)."""

from __future__ import annotations

import json
from pathlib import Path

FRUITS = {"banana": "yellow", "cherry": "red", "lime": "green", "plum": "purple"}


def chat_data(path: Path, n: int = 40) -> Path:
    rows = []
    for i in range(n):
        fruit = sorted(FRUITS)[i % len(FRUITS)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What colour is a {fruit}? (#{i})"},
                    {"role": "assistant", "content": f"A {fruit} is {FRUITS[fruit]}."},
                ]
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_job(model_dir: Path, data: Path, out: Path, **changes) -> dict:
    raw = {
        "model": str(model_dir),
        "task": "chat",
        "method": "lora",
        "data": {"train": str(data), "validation": 0.2, "max_length": 48},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "eval_steps": 2,
            "precision": "fp32",
            "num_threads": 1,
        },
        "output": str(out),
    }
    raw.update(changes)
    return raw
