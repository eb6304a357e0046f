"""``bench``: its figures are what a direct timing of the same work gives.

The predictors here cost a known time on a clock the test holds (the bench's ``time`` is
replaced), so every figure is checked exactly: no sleep, nothing a loaded machine can move.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tunewright.edge.runtime import bench_predictor


class Clock:
    """``perf_counter`` that moves only when a predictor works."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, ms: float) -> None:
        self.now += ms / 1000


@pytest.fixture
def clock(monkeypatch) -> Clock:
    from tunewright.edge.runtime import bench

    fake = Clock()
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class CostlyClassifier:
    """A forward pass costs 4 ms plus 1 ms per row, and every tenth call 10 ms more."""

    runtime, task_kind, generates = "test", "costly_classification", False

    def __init__(self, clock: Clock):
        self.clock = clock
        self.calls: list[tuple[int, ...]] = []

    def cost(self, call: int, rows: int) -> float:
        return 4 + rows + (10 if call % 10 == 9 else 0)

    def benchmark_inputs(self, *, batch=1, tokens=16):
        return {"input_ids": np.zeros((batch, tokens), np.int64)}

    def logits(self, inputs):
        rows = inputs["input_ids"].shape[0]
        self.clock.spend(self.cost(len(self.calls), rows))
        self.calls.append(inputs["input_ids"].shape)
        return np.zeros((rows, 2), np.float32)


class CostlyGenerator:
    """The prompt costs 30 ms (40 on the second run), each later token 5 ms, every fourth 9 ms."""

    runtime, task_kind, generates = "test", "costly_lm", True

    def __init__(self, clock: Clock):
        self.clock = clock
        self.streams = 0

    def benchmark_inputs(self, *, batch=1, tokens=16):
        return {"input_ids": np.zeros((1, tokens), np.int64)}

    def token_cost(self, index: int) -> float:
        return 9 if index % 4 == 0 else 5

    def stream(self, inputs, *, max_new_tokens=64, stop_at_eos=True, **options):
        self.streams += 1
        self.clock.spend(40 if self.streams == 3 else 30)  # streams: the warm-up, then the runs
        for index in range(max_new_tokens):
            if index:
                self.clock.spend(self.token_cost(index))
            yield index


def test_classifier_figures_are_the_time_each_call_takes(clock):
    predictor = CostlyClassifier(clock)
    figures = bench_predictor(predictor, tokens=7, batch=3, runs=20, warmup=2)
    # every timed call and every warm-up call ran on the inputs the figures say
    assert predictor.calls == [(3, 7)] * 22
    assert (figures["batch"], figures["tokens"], figures["runs"]) == (3, 7, 20)
    assert figures["kind"] == "costly_classification"
    timed = np.asarray([predictor.cost(call, 3) for call in range(2, 22)])  # the warm-up left out
    assert figures["p50_ms"] == pytest.approx(np.percentile(timed, 50)) and figures[
        "p50_ms"
    ] == pytest.approx(7)
    assert figures["p95_ms"] == pytest.approx(np.percentile(timed, 95)) and figures["p95_ms"] > 7
    assert figures["min_ms"] == pytest.approx(7) and figures["mean_ms"] == pytest.approx(
        timed.mean()
    )
    assert figures["examples_per_second"] == pytest.approx(3 / 0.007)


def test_generator_figures_leave_the_prompt_out_of_tokens_per_second(clock):
    predictor = CostlyGenerator(clock)
    figures = bench_predictor(predictor, new_tokens=21, prompt_tokens=9, runs=2)
    assert (figures["prompt_tokens"], figures["new_tokens"], figures["runs"]) == (9, 21, 2)
    gaps = [predictor.token_cost(index) for index in range(1, 21)]  # the 20 tokens after the first
    # the prompt's 30 or 40 ms are not in the rate: 20 tokens in sum(gaps) ms, each run alike
    assert figures["tokens_per_second"] == pytest.approx(20 / (sum(gaps) / 1000))
    assert figures["ms_per_token"] == pytest.approx(sum(gaps) / 20)
    assert figures["total_s"] == pytest.approx(
        (35 + sum(gaps)) / 1000
    )  # the median of 30 and 40 ms prompts
    # first-token latency and each later token's, as percentiles over the runs
    assert figures["first_token_ms"] == figures["first_token_p50_ms"] == pytest.approx(35)
    assert figures["first_token_p95_ms"] == pytest.approx(np.percentile([30, 40], 95))
    assert figures["token_p50_ms"] == pytest.approx(np.percentile(gaps * 2, 50)) == pytest.approx(5)
    assert figures["token_p95_ms"] == pytest.approx(np.percentile(gaps * 2, 95)) == pytest.approx(9)


def test_edge_bench_prints_latency_percentiles_of_a_generator(generator_bundle):
    from click.testing import CliRunner

    from tunewright.cli import build_cli

    result = CliRunner().invoke(
        build_cli(), ["edge", "bench", str(generator_bundle), "--runs", "2", "--new-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["kind"] == "causal_lm" and figures["new_tokens"] == 8
    assert 0 < figures["first_token_p50_ms"] <= figures["first_token_p95_ms"]
    assert 0 < figures["token_p50_ms"] <= figures["token_p95_ms"]


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
