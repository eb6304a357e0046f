"""bench/edge_bench.py's own logic: its data, how it turns timings into ratios and verdicts, and a
measuring child on a real bundle."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "edge_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("edge_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classification_data_is_stratified_disjoint_and_deterministic(bench):
    train, held_out = bench.classification_data()
    assert (train, held_out) == bench.classification_data()
    assert not {r["text"] for r in train} & {r["text"] for r in held_out}
    for category in bench.CATEGORIES:
        ours = sum(r["label"] == category for r in train + held_out)
        held = sum(r["label"] == category for r in held_out)
        assert 0 < ours <= bench.PER_CATEGORY
        assert abs(held - 0.3 * ours) <= 1  # every category held out in the same share
    assert (
        len(held_out) >= 200
    )  # a point of accuracy is two examples: the 1-point gate means something


def test_speed_ratios_read_tokens_per_second_and_latency_the_right_way_round(bench):
    assert bench.speed_ratio({"tokens_per_second": 80.0}, {"tokens_per_second": 10.0}) == 8.0
    assert bench.speed_ratio({"p50_ms": 2.0}, {"p50_ms": 10.0}) == 5.0  # lower latency: faster
    assert bench.speed_ratio({"p50_ms": 2.0}, {"tokens_per_second": 10.0}) is None
    ours = {"size_mb": 30.0, "p50_ms": 4.0, "drop_points": 0.5}
    figures = bench.ratios(
        ours, {"size_mb": 100.0, "p50_ms": 20.0}, {"size_mb": 25.0, "p50_ms": 5.0}
    )
    assert figures == {
        "size_vs_torch": 0.3,
        "speed_vs_torch": 5.0,
        "drop_points": 0.5,
        "speed_vs_optimum": 1.25,
        "size_vs_optimum": 1.2,
    }


def test_targets_are_met_at_their_bound_and_missed_beyond_it(bench):
    at_bound = bench.verdicts(
        "chat", {"size_vs_torch": 0.3, "speed_vs_torch": 8.0, "drop_points": 1.0}
    )
    assert at_bound == {
        "size_vs_torch <= 0.3": True,
        "speed_vs_torch >= 8": True,
        "drop_points <= 1": True,
    }
    beyond = bench.verdicts(
        "chat", {"size_vs_torch": 0.31, "speed_vs_torch": 7.9, "drop_points": 1.01}
    )
    assert set(beyond.values()) == {False}
    slower_than_optimum = bench.verdicts(
        "classifier", {"speed_vs_torch": 6.0, "speed_vs_optimum": 0.95, "drop_points": 0.0}
    )
    assert slower_than_optimum == {
        "speed_vs_torch >= 5": True,
        "speed_vs_optimum >= 1": False,
        "drop_points <= 1": True,
    }
    assert (
        bench.verdicts("image", {"speed_vs_torch": 4.0})["size_vs_torch <= 0.3"] is None
    )  # no figure, no verdict
    assert bench.gate_passed(1.0) and not bench.gate_passed(1.5)


def test_figures_over_rounds_are_medians_and_failed_rounds_drop_out(bench):
    rounds = [
        {"p50_ms": 3.0, "size_mb": 9.0, "peak_memory_mb": 100.0},
        {"error": "killed"},
        {"p50_ms": 1.0, "size_mb": 9.0, "peak_memory_mb": 140.0},
        {"p50_ms": 2.0, "size_mb": 9.0, "peak_memory_mb": 120.0},
    ]
    assert bench.median_figures(rounds) == {
        "p50_ms": 2.0,
        "size_mb": 9.0,
        "peak_memory_mb": 120.0,
        "rounds": 3,
    }
    assert bench.median_figures([{"error": "timed out"}, {"error": "later"}]) == {
        "error": "timed out"
    }


def test_the_table_puts_every_variant_against_pytorch(bench):
    rows = [
        {
            "variant": "torch fp32 eager",
            "size_mb": 100.0,
            "p50_ms": 20.0,
            "metric": 0.9,
            "drop_points": 0.0,
        },
        {
            "variant": "ours int8 (int8-dynamic)",
            "size_mb": 25.0,
            "p50_ms": 4.0,
            "metric": 0.9,
            "drop_points": 0.0,
            "passed": True,
        },
        {"variant": "optimum-cli defaults (int8 dynamic)", "error": "exit 1"},
    ]
    summary = {
        "metric": "accuracy on 200 held-out examples",
        "scheme": "int8-dynamic",
        "targets": bench.verdicts("classifier", {"speed_vs_torch": 5.0, "drop_points": 0.0}),
    }
    text = bench.table("classifier", rows, summary)
    ours = next(line for line in text.splitlines() if line.startswith("ours"))
    assert ours.split()[3:8] == [
        "25.0",
        "0.25",
        "4.00",
        "5.00",
        "nan",
    ]  # size, x size, p50, x speed, peak
    assert ours.split()[-1] == "pass"
    assert any(
        line.split() == ["optimum-cli", "defaults", "(int8", "dynamic)", "exit", "1"]
        for line in text.splitlines()
    )
    assert (
        "speed_vs_torch >= 5: met, speed_vs_optimum >= 1: no figure, drop_points <= 1: met" in text
    )
    summary["also"] = {
        "ours int4 (int4-block)": {
            "targets": bench.verdicts(
                "classifier", {"speed_vs_torch": 4.0, "speed_vs_optimum": 1.1, "drop_points": 2.0}
            )
        }
    }
    assert (
        "ours int4 (int4-block): speed_vs_torch >= 5: MISSED, speed_vs_optimum >= 1: met, drop_points <= 1: "
        "MISSED"
    ) in bench.table("classifier", rows, summary)


def test_a_child_times_a_real_bundle_and_the_torch_side_gets_the_same_inputs(
    bench, tmp_path, tiny_bert_dir
):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import load_bundle

    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = [
        {"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": ["neg", "pos"][i % 2]}
        for i in range(12)
    ]
    folder = tmp_path / "bundle"
    export_bundle(
        model,
        tokenizer,
        "classification",
        examples,
        folder,
        quantize="none",
        labels=["neg", "pos"],
        bench=False,
        log=lambda line: None,
    )
    figures = bench.measure_in_subprocess(
        {"engine": "bundle", "folder": str(folder), "runs": 7, "new_tokens": 0, "tokens": 12}
    )
    assert "error" not in figures, figures
    assert (figures["runs"], figures["tokens"], figures["batch"]) == (7, 12, 1)
    assert figures["min_ms"] <= figures["p50_ms"] <= figures["p95_ms"]
    assert figures["size_mb"] == pytest.approx(
        sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    )
    # the PyTorch child reads back exactly what the bundle was timed on
    inputs = load_bundle(folder).benchmark_inputs(batch=1, tokens=12)
    np.savez(tmp_path / "inputs.npz", **inputs)
    saved = bench.SavedInputs(str(tmp_path / "inputs.npz"), generates=False).benchmark_inputs(
        tokens=99
    )
    assert saved.keys() == inputs.keys()
    assert all(np.array_equal(saved[k], inputs[k]) for k in inputs)
    assert json.loads(json.dumps(figures)) == figures  # what the parent reads is plain JSON
