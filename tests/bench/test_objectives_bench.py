"""bench/objectives_bench.py in its quick mode, tunewright's side (TRL lives in an environment of
its own, which CI does not build): the dpo side trains in a child process, reports its own peak
RSS, and its held-out figures move from the untuned tie."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "objectives_bench.py"

pytestmark = pytest.mark.slow


def load_bench():
    spec = importlib.util.spec_from_file_location("objectives_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_quick_dpo_bench_reports_our_side_at_the_default_precision(tiny_llama_dir, tmp_path):
    bench = load_bench()
    report = bench.main(
        ["dpo", "--quick", "--model", str(tiny_llama_dir), "--workdir", str(tmp_path)]
    )
    ours = report["ours"]
    assert ours["baseline"]["reward_accuracy"] == pytest.approx(0.5)  # the untuned tie
    assert ours["final"]["reward_margin"] > ours["baseline"]["reward_margin"]
    assert ours["peak_rss_mb"] > 0 and ours["pairs_per_second"] > 0
    assert "trl" not in report and "throughput_ratio" not in report
    # the user's default precision, not one the bench picked
    import yaml

    config = yaml.safe_load((tmp_path / "ours" / "config.yaml").read_text())
    assert config["training"]["precision"] == "auto"
    assert bench.trl_precision(bench_args(bench, "default")) == {}
    assert bench.trl_precision(bench_args(bench, "fp32")) == {"bf16": False}


def bench_args(bench, precision: str):
    import argparse

    return argparse.Namespace(precision=precision)
