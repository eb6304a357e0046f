"""Objectives under the federated runner: ``dpo`` trains across simulated sites (only the LoRA
weights travel; each site's reference is its own model with the adapter switched off) with its
held-out reward figures reported per round; ``distill`` is refused at the config check."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from federated_jobs import write_jsonl

from tunewright import ConfigError, get_plugin_manager, load_config

COLOURS = {"banana": "yellow", "lime": "green", "plum": "purple", "cherry": "red", "sky": "blue"}


def pairs(n: int, seed: int = 0) -> list[dict]:
    """A polite answer with the right colour preferred over a rude one with a wrong colour."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        thing = rng.choice(sorted(COLOURS))
        wrong = rng.choice(sorted(set(COLOURS.values()) - {COLOURS[thing]}))
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": f"Colour of {thing}? (#{i})"}]},
                "preferred_output": [
                    {"role": "assistant", "content": f"Gladly: {COLOURS[thing]}. Thank you!"}
                ],
                "non_preferred_output": [
                    {"role": "assistant", "content": f"Ugh, {wrong}. Go away."}
                ],
            }
        )
    return rows


def federated_job(model: Path, data: Path, out: Path, task: str, **section) -> dict:
    raw = {
        "model": str(model),
        "task": task,
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(data), "validation": 0.25, "max_length": 64},
        "training": {
            "batch_size": 8,
            "learning_rate": 5e-3,
            "precision": "fp32",
            "num_threads": 1,
        },
        "output": str(out),
        "runner": "federated",
        "seed": 3,
        "federated": {
            "rounds": 2,
            "local_steps": 4,
            "sites": 2,
            "min_sites": 2,
            "wait_for_sites": 60,
            "round_timeout": 120,
            "simulation_cpus": 2,
        },
    }
    if section:
        raw[task] = section
    return raw


def test_distill_is_refused_under_the_federated_runner(tmp_path):
    raw = federated_job(
        Path("m"), tmp_path / "d.jsonl", tmp_path / "out", "distill", teacher="runs/teacher"
    )
    with pytest.raises(
        ConfigError,
        match="distill: does not run under runner: federated: every site would need the teacher",
    ):
        load_config(raw, get_plugin_manager().registries)


@pytest.mark.slow  # a Flower simulation training a tiny model
def test_dpo_runs_federated_with_reward_figures_per_round(tmp_path, tiny_llama_dir, flower_env):
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(64))
    out = tmp_path / "run"
    config = tmp_path / "dpo.yaml"
    config.write_text(
        yaml.safe_dump(federated_job(tiny_llama_dir, data, out, "dpo", beta=0.5), sort_keys=False)
    )
    done = subprocess.run(
        [sys.executable, "-m", "tunewright", "federate", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = [
        json.loads(line) for line in (out / "federated" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    for record in rounds:
        assert {s["site"] for s in record["sites"]} == {"site-0", "site-1"}
        central = record["central"]  # the aggregate on the server's held-out pairs
        assert set(central) >= {"loss", "reward_accuracy", "reward_margin"}
        assert 0.0 <= central["reward_accuracy"] <= 1.0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_round = [r for r in logged if "round" in r and "eval_reward_accuracy" in r]
    assert [r["round"] for r in per_round] == [1, 2]
    figures = json.loads((out / "eval.json").read_text())
    assert figures["primary_metric"] == "reward_accuracy"
    # the new adapter starts equal to the reference (every pair a tie), and training moves it
    assert figures["baseline"]["reward_accuracy"] == pytest.approx(0.5)
    assert figures["final"]["reward_margin"] > figures["baseline"]["reward_margin"]
    assert rounds[-1]["central"]["loss"] < 0.6931


GRADER = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
}


@pytest.mark.slow  # a Flower simulation sampling and grading at each site
def test_rft_runs_federated_with_the_grade_per_round(tmp_path, tiny_llama_dir, flower_env):
    things = sorted(COLOURS)
    rows = [
        {
            "messages": [{"role": "user", "content": f"Colour of {things[i % 5]}? (#{i})"}],
            "answer": COLOURS[things[i % 5]],
        }
        for i in range(40)
    ]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "run"
    raw = federated_job(tiny_llama_dir, data, out, "rft", grader=GRADER, k=2, max_tokens=4)
    raw["training"]["batch_size"] = 4
    raw["federated"]["local_steps"] = 2
    config = tmp_path / "rft.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "tunewright", "federate", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = [
        json.loads(line) for line in (out / "federated" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    for record in rounds:
        assert 0.0 <= record["central"]["grade"] <= 1.0
    figures = json.loads((out / "eval.json").read_text())
    assert figures["primary_metric"] == "grade" and "grade" in figures["final"]
    # the server's run records the tuned answers to its held-out prompts, as a local run does
    held = [
        json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()
    ]
    assert all(isinstance(row["tuned_answer"], str) for row in held)
