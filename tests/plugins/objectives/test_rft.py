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


@pytest.mark.slow  # trains and exports a bundle
def test_an_rft_run_exports_judged_on_its_own_greedy_answers(tiny_llama_dir, tmp_path):
    from tunewright.edge.runtime import load_bundle

    pm = get_plugin_manager()
    # a supervised start, so that the greedy answers are words (an untaught tiny model writes
    # blank lines, which the chat template's tokenization would not give back as it wrote them)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps(
                {"messages": [*p["messages"], {"role": "assistant", "content": p["answer"]}]}
            )
            + "\n"
            for p in prompts(48)
        )
    )
    raw = {**job(tiny_llama_dir, sft, tmp_path / "sft"), "task": "chat"}
    del raw["rft"]
    raw["training"].update(max_steps=30, batch_size=8, learning_rate=1e-2)
    run_job(load_config(raw, pm.registries), pm, echo=lambda _: None)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts(24)))
    raw = job(tiny_llama_dir, data, tmp_path / "run", k=2, max_tokens=6)
    raw["rft"]["init_from"] = str(tmp_path / "sft")
    raw["training"].update(max_steps=2, batch_size=4)
    run_job(load_config(raw, pm.registries), pm, echo=lambda _: None)
    held = [
        json.loads(line)
        for line in (tmp_path / "run" / "data" / "validation.jsonl").read_text().splitlines()
    ]
    assert held and all(isinstance(row["tuned_answer"], str) for row in held)
    assert any(row["tuned_answer"].strip() for row in held)

    with pytest.raises(SystemExit) as done:
        main(
            [
                "export",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "bundle"),
                "--quantize",
                "none",
                "--no-bench",
            ]
        )
    assert done.value.code == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert (manifest["task"], manifest["parity_task"]) == ("rft", "chat")
    parity = manifest["parity"]
    assert parity["metric"] == "mean_token_accuracy" and parity["passed"]
    # the tuned model's own answers: it mostly agrees with itself (an answer cut at max_tokens
    # misses its end of turn), and the bundle with it
    assert parity["tuned"] >= 0.8 and parity["drop_points"] <= parity["threshold_points"]
    assert manifest["run"]["eval"]["primary_metric"] == "grade"
    answer = load_bundle(tmp_path / "bundle").generate(
        [{"role": "user", "content": "Colour of lime? (#1)"}], max_new_tokens=6
    )
    assert isinstance(answer, str)
