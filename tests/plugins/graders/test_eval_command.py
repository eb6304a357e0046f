"""``tunewright eval RUN --grader``: a tiny tuned run graded beside its base model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tunewright import get_plugin_manager, load_config, run_job
from tunewright.cli import main
from tunewright.grading import render

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine"))
from samples import FRUITS, chat_rows, write_jsonl


def tw(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


@pytest.mark.slow
def test_eval_grades_a_run_and_its_base_side_by_side(tiny_llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(40))
    pm = get_plugin_manager()
    raw = {
        "model": str(tiny_llama_dir),
        "task": "chat",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(data), "validation": 0.2, "max_length": 64},
        "training": {"max_steps": 10, "batch_size": 8, "learning_rate": 5e-3},
        "output": str(tmp_path / "run"),
        "seed": 7,
    }
    run_job(load_config(raw, pm.registries), pm, echo=lambda _: None)
    items = []
    for row in chat_rows(4, seed=5):
        fruit = next(f for f in FRUITS if f in row["messages"][0]["content"])
        items.append({**row, "answer": FRUITS[fruit]})
    test = write_jsonl(tmp_path / "test.jsonl", items)
    grader = tmp_path / "colour.yaml"
    grader.write_text(
        yaml.safe_dump(
            {
                "type": "multi",
                "name": "colour",
                "graders": {
                    "named": {
                        "type": "string_check",
                        "input": "{{sample.output_text}}",
                        "reference": "{{item.answer}}",
                        "operation": "ilike",
                    },
                    "close": {
                        "type": "text_similarity",
                        "input": "{{sample.output_text}}",
                        "reference": "{{item.messages[-1].content}}",
                        "evaluation_metric": "rouge_l",
                    },
                },
                "calculate_output": "(named + close) / 2",
            }
        )
    )
    code, out, err = tw(
        capsys,
        "eval",
        str(tmp_path / "run"),
        "--data",
        str(test),
        "--grader",
        str(grader),
        "--max-new-tokens",
        "8",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["grader"] == "colour"
    for stage in ("baseline", "tuned"):
        summary = result[stage]
        assert summary["count"] == 4 and summary["errors"] == 0
        assert 0.0 <= summary["mean"] <= 1.0 and summary["std"] >= 0.0
        assert len(summary["worst"]) == 3
        assert summary["worst"][0]["location"].startswith(str(test))
    table = "\n".join(render(result))
    assert "baseline" in table and "worst (tuned):" in table
    grader.write_text(yaml.safe_dump({"type": "string_check", "input": "x", "reference": "y"}))
    code, _, err = tw(
        capsys, "eval", str(tmp_path / "run"), "--data", str(test), "--grader", str(grader)
    )
    assert code == 2 and "'operation' is required" in err


def test_a_run_that_does_not_generate_is_refused_before_anything_loads(tmp_path, capsys):
    run = tmp_path / "classifier"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": "minilm-l6", "task": "classification"})
    )
    items = write_jsonl(
        tmp_path / "items.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    grader = tmp_path / "grader.yaml"
    grader.write_text(
        yaml.safe_dump(
            {
                "type": "string_check",
                "name": "g",
                "input": "{{sample.output_text}}",
                "reference": "x",
                "operation": "eq",
            }
        )
    )
    code, _, err = tw(capsys, "eval", str(run), "--data", str(items), "--grader", str(grader))
    assert code == 2
    assert "grades generated text" in err and "'classification'" in err
    assert "sequence_classification" in err and "--data FILE` gives its task's metrics" in err
