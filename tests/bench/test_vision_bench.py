"""bench/vision_bench.py in its quick mode: the whole path runs and its figures are consistent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vision_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("vision_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_are_stratified_and_disjoint(bench):
    train, held_out = bench.digits(100, 50)
    assert len(train) == 100 and len(held_out) == 50
    assert sorted({e["label"] for e in train}) == list(range(10))
    assert all(sum(e["label"] == d for e in held_out) == 5 for d in range(10))
    seen = {e["image"].tobytes() for e in train}
    assert not [e for e in held_out if e["image"].tobytes() in seen]


@pytest.mark.slow
def test_quick_run_reports_every_figure(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    results = bench.main(
        ["--quick", "--methods", "lora", "--threads", "1", "--json", str(tmp_path / "r.json")]
    )
    assert (tmp_path / "r.json").is_file()
    # the pretrained network with a fresh head for ten digits guesses (chance: 0.1)
    assert results["untrained_head"]["accuracy"] < 0.4
    lora = results["methods"]["lora"]
    assert (
        lora["steps"] == 4 and 100_000 < lora["trainable_values"] < 200_000
    )  # 1x1 convs' LoRA + the head
    edge = results["edge"]
    assert edge["onnx_none"]["accuracy_drop_points"] == pytest.approx(
        0.0, abs=1e-9
    )  # fp32 ONNX: same answers
    assert edge["onnx_none"]["parity_passed"] and edge["onnx_none"]["top1_agreement"] == 1.0
    int8 = edge["onnx_int8_static"]
    assert int8["parity_passed"] == (int8["accuracy_drop_points"] <= 1.0)
    assert edge["onnx_int8_static"]["model_mb"] < 0.35 * edge["onnx_none"]["model_mb"]
    assert edge["onnx_none"]["size_vs_torch"] == pytest.approx(1.0, abs=0.05)  # same weights, fp32
    for key in ("onnx_none", "onnx_int8_static"):
        assert edge[key]["speedup_vs_torch"] == pytest.approx(
            edge["torch_fp32"]["p50_ms"] / edge[key]["p50_ms"], rel=0.02
        )
