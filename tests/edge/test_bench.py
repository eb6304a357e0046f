"""``bench``: its figures are what a direct timing of the same work gives."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tunewright.edge.runtime import bench_predictor


class SleepyClassifier:
    """A predictor whose forward pass takes a known time: 4 ms plus 1 ms per row."""

    runtime, task_kind, generates = "test", "sleepy_classification", False

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def benchmark_inputs(self, *, batch=1, tokens=16):
        return {"input_ids": np.zeros((batch, tokens), np.int64)}

    def logits(self, inputs):
        self.calls.append(inputs["input_ids"].shape)
        time.sleep(0.004 + 0.001 * inputs["input_ids"].shape[0])
        return np.zeros((inputs["input_ids"].shape[0], 2), np.float32)


class SleepyGenerator:
    """A generator whose prompt costs 30 ms and every later token 5 ms."""

    runtime, task_kind, generates = "test", "sleepy_lm", True

    def benchmark_inputs(self, *, batch=1, tokens=16):
        return {"input_ids": np.zeros((1, tokens), np.int64)}

    def stream(self, inputs, *, max_new_tokens=64, stop_at_eos=True, **options):
        time.sleep(0.030)
        for index in range(max_new_tokens):
            if index:
                time.sleep(0.005)
            yield index


def test_classifier_figures_match_the_time_each_call_takes():
    predictor = SleepyClassifier()
    figures = bench_predictor(predictor, tokens=7, batch=3, runs=20, warmup=2)
    # every timed call and every warm-up call ran on the inputs the figures say
    assert predictor.calls == [(3, 7)] * 22
    assert (figures["batch"], figures["tokens"], figures["runs"], figures["kind"]) == (3, 7, 20, "sleepy_classification")
    # 7 ms a call: a sleep never wakes early, and a loaded machine adds some
    assert 7.0 <= figures["min_ms"] <= figures["p50_ms"] <= figures["p95_ms"]
    assert figures["p50_ms"] < 7.0 * 3
    assert figures["examples_per_second"] == pytest.approx(3 / (figures["p50_ms"] / 1000))


def test_generator_figures_leave_the_prompt_out_of_tokens_per_second():
    figures = bench_predictor(SleepyGenerator(), new_tokens=21, prompt_tokens=9, runs=2)
    assert (figures["prompt_tokens"], figures["new_tokens"], figures["runs"]) == (9, 21, 2)
    # 20 tokens after the first, 5 ms each: at most 200 per second; the 30 ms prompt is not in it
    assert 200 / 3 < figures["tokens_per_second"] <= 200
    assert figures["ms_per_token"] == pytest.approx(1000 / figures["tokens_per_second"])
    assert 30 <= figures["first_token_ms"] < 30 * 3
    assert 0.130 <= figures["total_s"] < 0.130 * 3


def test_bundle_bench_agrees_with_a_direct_timing_of_the_same_inputs(classifier_bundle):
    from tunewright.edge.runtime import load_bundle

    predictor = load_bundle(classifier_bundle)
    inputs = predictor.benchmark_inputs(batch=1, tokens=16)
    # interleave the bench's runs with direct ones so that both see the same load
    bench_mins, direct = [], []
    for _ in range(5):
        bench_mins.append(bench_predictor(predictor, tokens=16, runs=10, warmup=1)["min_ms"])
        for _ in range(10):
            start = time.perf_counter()
            predictor.logits(inputs)
            direct.append((time.perf_counter() - start) * 1000)
    assert min(direct) / 2 <= min(bench_mins) <= min(direct) * 2
