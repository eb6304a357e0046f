"""The ``rft`` objective: k graded samples per prompt, group-relative advantages, a KL term to the
adapter-disabled reference; held-out grade as the primary metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewright import ConfigError, get_plugin_manager, load_config, run_job
from tunewright.cli import main

COLOURS = {"banana": "yellow", "lime": "green", "plum": "purple", "cherry": "red"}


def prompts(n: int) -> list[dict]:
    things = sorted(COLOURS)
    return [
        {
            "messages": [{"role": "user", "content": f"Colour of {things[i % 4]}? (#{i})"}],
            "answer": COLOURS[things[i % 4]],
        }
        for i in range(n)
    ]


GRADER = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


def job(model: Path, data: Path, out: Path, **rft) -> dict:
    return {
        "model": str(model),
        "task": "rft",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(data), "validation": 0.25, "max_length": 64},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1},
        "rft": {"grader": GRADER, "k": 4, "max_tokens": 6, **rft},
        "output": str(out),
        "seed": 3,
    }


def test_the_rft_section_checks_its_grader_and_bounds(tmp_path):
    pm = get_plugin_manager()
    raw = job(Path("m"), tmp_path / "d.jsonl", tmp_path / "out")
    with pytest.raises(ConfigError, match="rft.init_from: nowhere is not a finished run"):
        load_config({**raw, "rft": {"grader": GRADER, "init_from": "nowhere"}}, pm.registries)
    with pytest.raises(ConfigError, match="rft.k"):
        load_config({**raw, "rft": {"grader": GRADER, "k": 1}}, pm.registries)
    with pytest.raises(ConfigError, match="rft.grader: text_similarity grader .close.: meteor"):
        load_config(
            {**raw, "rft": {"grader": {**GRADER, "evaluation_metric": "meteor"}}}, pm.registries
        )


def test_rft_raises_the_held_out_grade_of_a_tiny_model(tiny_llama_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts(48)))
    pm = get_plugin_manager()
    raw = job(tiny_llama_dir, data, tmp_path / "run", k=6, max_tokens=4)
    raw["training"].update(max_steps=8, batch_size=8, learning_rate=2e-2)
    result = run_job(load_config(raw, pm.registries), pm, echo=lambda _: None)
    figures = json.loads((tmp_path / "run" / "eval.json").read_text())
    for stage in ("baseline", "final"):
        assert 0.0 <= figures[stage]["grade"] <= 1.0
        assert figures[stage]["loss"] == pytest.approx(1.0 - figures[stage]["grade"])
    assert figures["primary_metric"] == "grade"
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and all(abs(v) < 100 for v in losses)
    assert result.global_step == 8
    assert figures["final"]["grade"] > figures["baseline"]["grade"] + 0.15

    # no figure of an ONNX model judges an rft run yet (its grade needs the model to generate):
    # the export refuses it, exit 2, and writes nothing
    with pytest.raises(SystemExit) as done:
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert done.value.code == 2
    assert not (tmp_path / "bundle").exists()
