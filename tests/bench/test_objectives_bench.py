"""bench/objectives_bench.py in its quick mode, tunewright's side (TRL lives in an environment of
its own, which CI does not build): the dpo side trains in a child process, reports its own peak
RSS, and its held-out figures move from the untuned tie; rft starts from a merged SFT model
folder; distill trains its teacher, a half-depth student, and exports, times and grades both."""

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


def test_quick_rft_bench_starts_both_sides_from_the_merged_sft_model(tiny_llama_dir, tmp_path):
    bench = load_bench()
    report = bench.main(
        ["rft", "--quick", "--model", str(tiny_llama_dir), "--workdir", str(tmp_path)]
    )
    sft_model = tmp_path / "sft-model"
    assert report["sft"]["model"] == str(sft_model)
    assert (sft_model / "config.json").is_file() and (sft_model / "tokenizer.json").is_file()
    assert not (sft_model / "adapter_config.json").exists()  # merged: a plain model folder
    import yaml

    config = yaml.safe_load((tmp_path / "ours" / "config.yaml").read_text())
    assert config["model"] == str(sft_model)
    assert config["rft"]["grader"]["operation"] == "eq"
    assert report["sft_grade"] == report["ours"]["baseline"]["grade"]
    assert report["ours_rise_points"] == pytest.approx(
        100 * (report["ours_grade"] - report["sft_grade"])
    )
    assert report["ours"]["completions_per_second"] > 0
    assert "trl" not in report and "throughput_ratio" not in report


def test_quick_distill_bench_trains_its_teacher_and_times_and_grades_both_bundles(
    tiny_llama_dir, tmp_path
):
    bench = load_bench()
    report = bench.main(
        ["distill", "--quick", "--model", str(tiny_llama_dir), "--workdir", str(tmp_path)]
    )
    assert report["teacher_run"]["run"] == str(tmp_path / "teacher")
    assert report["teacher_layers"] == 2 and report["student_run"]["layers"] == 1
    for name in ("teacher", "student"):
        side = report[name]
        assert "export" not in side, side.get("export")  # the export failed: its error
        assert side["quantization"] == "int8-block" and side["parity"]["passed"]
        assert side["size_mb"] > 0 and side["tokens_per_second"] > 0
        assert 0.0 <= side["grade"] <= 1.0
    assert report["speed_ratio"] == pytest.approx(
        report["student_tokens_per_second"] / report["teacher_tokens_per_second"]
    )
    assert {"teacher_grade", "student_grade", "grade_ratio"} <= set(report)
    assert {"teacher_size_mb", "student_size_mb"} <= set(report)
