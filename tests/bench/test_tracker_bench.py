"""bench/tracker_bench.py in its quick mode: every side runs, each tracker's own cost is timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "tracker_bench.py"

pytestmark = pytest.mark.slow

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def test_quick_tracker_bench_times_every_tracker_beside_jsonl(tiny_llama_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("tracker_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.main(["--quick", "--model", str(tiny_llama_dir), "--workdir", str(tmp_path)])
    (side,) = figures["rounds"]
    assert set(side) == {"jsonl", "all"}
    assert set(side["all"]["trackers"]) == {"jsonl", "tensorboard", "mlflow"}
    # logging_steps 1: one log per step, and one per evaluation (the baseline and the final)
    assert side["all"]["trackers"]["mlflow"]["log_calls"] == 3 + 2
    assert set(figures["sides"]["all"]["direct_share_of_step"]) == {"tensorboard", "mlflow"}
    assert figures["sides"]["jsonl"]["overhead_vs_jsonl"] == 0
    assert (tmp_path / "round0-all" / "mlflow.db").exists()
