"""The ``distill`` objective: a student cut from the teacher's base learns the teacher's top-k
distribution; the teacher reads each example once, then the cache answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunewright import get_plugin_manager, load_config, run_job
from tunewright.plugins.objectives.distill import keep_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine"))
from samples import chat_rows, write_jsonl


def test_keep_layers_keeps_the_first_and_last(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    last = model.model.layers[-1]
    cut = keep_layers(model, 1)
    assert len(cut.model.layers) == 1 and cut.config.num_hidden_layers == 1
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert keep_layers(model, 2).model.layers[-1] is not last  # a fresh model: its own last
    with pytest.raises(Exception, match="has 2 layers"):
        keep_layers(model, 3)


def test_a_half_depth_student_learns_the_teachers_distribution(
    tiny_llama_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(32))
    pm = get_plugin_manager()

    def job(name: str) -> dict:
        return {
            "model": str(tiny_llama_dir),
            "task": "distill",
            "method": "full",
            "data": {"train": str(data), "validation": 0.25, "max_length": 64},
            "training": {"max_steps": 8, "batch_size": 8, "learning_rate": 5e-3},
            "distill": {
                "teacher": str(tiny_llama_dir),
                "top_k": 8,
                "student_layers": 1,
                "hard_weight": 0.5,
            },
            "output": str(tmp_path / name),
            "seed": 3,
        }

    task = pm.registries.tasks["distill"]
    run_job(load_config(job("a"), pm.registries), pm, echo=lambda _: None)
    assert task.teacher_calls == 32  # every example read by the teacher once
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    config = json.loads((tmp_path / "a" / "adapter" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    # a second job on the same data and teacher reads the cache
    task.teacher_calls = 0
    run_job(load_config(job("b"), pm.registries), pm, echo=lambda _: None)
    assert task.teacher_calls == 0
