"""The ``dpo`` objective: the hosted preference format checked line by line, beta bounded, and a
tiny model whose held-out reward accuracy rises, started from a supervised run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunewright import ConfigError, get_plugin_manager, load_config, run_job
from tunewright.cli import main

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


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def job(model: Path, data: Path, out: Path, task: str = "dpo", steps: int = 30, **section) -> dict:
    raw = {
        "model": str(model),
        "task": task,
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(data), "validation": 0.25, "max_length": 64},
        "training": {"max_steps": steps, "batch_size": 8, "learning_rate": 5e-3},
        "output": str(out),
        "seed": 3,
    }
    if task == "dpo":
        raw["dpo"] = {"beta": 0.5, **section}
    return raw


def test_validate_reports_each_bad_pair_at_its_line(tiny_llama_dir, tmp_path, capsys):
    good = pairs(3)
    lines = [
        good[0],
        {**good[1], "preferred_output": [{"role": "user", "content": "x"}]},
        {**good[2], "non_preferred_output": []},
        {"input": {"messages": []}, **{k: good[0][k] for k in good[0] if k != "input"}},
        {
            **good[0],
            "input": {
                "messages": [*good[0]["input"]["messages"], {"role": "assistant", "content": "a"}]
            },
        },
        {"preferred_output": good[0]["preferred_output"], "non_preferred_output": []},
    ]
    data = write(tmp_path / "prefs.jsonl", lines)
    with pytest.raises(SystemExit) as exited:
        main(["validate", str(data), "--model", str(tiny_llama_dir)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert exited.value.code == 2
    assert f"{data}:2: preferred_output must hold exactly one assistant message" in text
    assert f"{data}:3: non_preferred_output must hold exactly one assistant message" in text
    assert f"{data}:4: input.messages must be a non-empty list" in text
    assert f"{data}:5: input.messages ends with an assistant turn" in text
    assert f"{data}:6:" in text and "'input'" in text
    assert f"{data}:1:" not in text


def test_beta_outside_0_to_2_is_refused(tmp_path):
    pm = get_plugin_manager()
    for beta in (-0.1, 2.5):
        raw = job(Path("m"), tmp_path / "d.jsonl", tmp_path / "out")
        raw["dpo"]["beta"] = beta
        with pytest.raises(ConfigError, match="dpo.beta"):
            load_config(raw, pm.registries)


@pytest.mark.slow  # exports a bundle
def test_sft_then_dpo_raises_held_out_reward_accuracy(tiny_llama_dir, tmp_path):
    pm = get_plugin_manager()
    chat = write(
        tmp_path / "sft.jsonl",
        [
            {"messages": [*p["input"]["messages"], p["preferred_output"][0]]}
            for p in pairs(40, seed=1)
        ],
    )
    run_job(
        load_config(job(tiny_llama_dir, chat, tmp_path / "sft", "chat", 5), pm.registries),
        pm,
        echo=lambda _: None,
    )
    prefs = write(tmp_path / "prefs.jsonl", pairs(64))
    raw = job(tiny_llama_dir, prefs, tmp_path / "dpo", steps=15, init_from=str(tmp_path / "sft"))
    result = run_job(load_config(raw, pm.registries), pm, echo=lambda _: None)
    figures = json.loads((tmp_path / "dpo" / "eval.json").read_text())
    # the new adapter starts switched-off-equal to the reference: every pair a tie
    assert figures["baseline"]["reward_accuracy"] == pytest.approx(0.5)
    assert figures["baseline"]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert figures["final"]["reward_accuracy"] >= 0.8
    assert figures["final"]["reward_margin"] > 0
    assert result.metrics["train_loss"] < 0.6931

    # the export: a bundle keeps no reference model to reward against, so the gate judges it as a
    # chat model on the held-out prompts and their preferred answers
    from tunewright.edge import export_run
    from tunewright.edge.runtime import load_bundle

    exported = export_run(
        tmp_path / "dpo",
        tmp_path / "bundle",
        quantize="none",
        bench=False,
        pm=pm,
        log=lambda _: None,
    )
    manifest = exported.manifest
    assert (manifest["task"], manifest["parity_task"]) == ("dpo", "chat")
    assert manifest["parity"]["metric"] == "mean_token_accuracy" and manifest["parity"]["passed"]
    assert manifest["parity"]["drop_points"] < 0.5
    answer = load_bundle(tmp_path / "bundle").generate(
        [{"role": "user", "content": "Colour of lime? (#7)"}], max_new_tokens=4
    )
    assert isinstance(answer, str)  # the torch-free runtime opens it as any chat bundle
