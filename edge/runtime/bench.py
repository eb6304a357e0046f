"""``bench``: batch-1 latency (p50/p95), throughput and peak memory of a bundle on this machine.

What is timed comes from the predictor (``benchmark_inputs``): one forward pass for a predictor
that does not generate, greedy generation without stopping at eos for one that does.
"""

from __future__ import annotations

import itertools
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import BundleError
from .predictors import SAMPLE_TEXT  # noqa: F401  (re-exported: the sample text every bench uses)
from .registry import load_bundle


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` survives ``execve``, so a child started by a big parent
    would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95, mean and min of durations in seconds, as milliseconds."""
    values = np.asarray(seconds) * 1000
    # min beside the percentiles: on a shared machine it shows what the model costs without contention
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
    }


def _time_logits(predictor, inputs, warmup: int, runs: int) -> list[float]:
    """Seconds per call of ``predictor.logits(inputs)`` over ``runs`` calls after ``warmup``."""
    for _ in range(warmup):
        predictor.logits(inputs)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.logits(inputs)
        seconds.append(time.perf_counter() - start)
    return seconds


def _time_generation(predictor, inputs, runs: int, new_tokens: int) -> dict[str, Any]:
    list(predictor.stream(inputs, max_new_tokens=4, stop_at_eos=False))  # warm up
    rates: list[float] = []
    firsts: list[float] = []
    totals: list[float] = []
    gaps: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        stamps = [
            time.perf_counter()
            for _token in predictor.stream(inputs, max_new_tokens=new_tokens, stop_at_eos=False)
        ]
        end = time.perf_counter()
        count = len(stamps)
        first = stamps[0] if stamps else end
        gaps += [
            later - earlier for earlier, later in itertools.pairwise(stamps)
        ]  # each token after the first
        firsts.append(first - start)
        totals.append(end - start)
        # tokens after the first, over the time after the first: the prompt's cost stays out
        rates.append((count - 1) / (end - first) if count > 1 else 0.0)
    rate = float(np.median(rates))
    figures: dict[str, Any] = {
        "tokens_per_second": rate,
        "first_token_ms": float(np.median(firsts) * 1000),
        "ms_per_token": 1000 / rate if rate else None,
        "total_s": float(np.median(totals)),
        "first_token_p50_ms": float(np.percentile(firsts, 50) * 1000),
        "first_token_p95_ms": float(np.percentile(firsts, 95) * 1000),
    }
    if gaps:
        figures.update(
            token_p50_ms=float(np.percentile(gaps, 50) * 1000),
            token_p95_ms=float(np.percentile(gaps, 95) * 1000),
        )
    return figures


def takes_images(method) -> bool:
    """Whether a predictor's method (``run``, ``benchmark_inputs``) takes an ``images`` option."""
    import inspect

    try:
        return "images" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def images_refused(predictor) -> str:
    """The sentence for ``--image`` given to a predictor that takes no images beside its inputs."""
    return (
        f"--image: a {predictor.task_kind} bundle takes no images beside its inputs (an image classifier "
        "takes image paths as its inputs)"
    )


def bench_predictor(
    predictor,
    *,
    tokens: int = 16,
    batch: int = 1,
    runs: int = 50,
    warmup: int = 5,
    new_tokens: int = 64,
    prompt_tokens: int = 32,
    images: Sequence[Any] = (),
) -> dict[str, Any]:
    """Time ``predictor`` on its own benchmark inputs.

    Classifiers: ``runs`` forward passes of ``batch`` x ``tokens`` after ``warmup``; p50/p95/mean/min
    in ms and examples per second. Generators: ``new_tokens`` greedy tokens after a
    ``prompt_tokens`` prompt (shown ``images`` first, for a predictor that takes images), over
    ``min(runs, 3)`` runs: tokens per second after the first token (the median run), the first
    token's latency (the prompt, its images included: median, p50 and p95 over the runs), and the
    latency of each later token (p50 and p95 over every token of every run). Raises
    :class:`BundleError` for ``images`` given to a predictor that takes none.
    """
    figures: dict[str, Any] = {"kind": predictor.task_kind, "runtime": predictor.runtime}
    extra: dict[str, Any] = {}
    if images:
        if not takes_images(predictor.benchmark_inputs):
            raise BundleError(images_refused(predictor))
        extra["images"] = list(images)
    if predictor.generates:
        inputs = predictor.benchmark_inputs(batch=1, tokens=prompt_tokens, **extra)
        runs = max(1, min(runs, 3))
        if "pixel_values" in inputs:
            figures["views"] = int(np.asarray(inputs["pixel_values"]).shape[0])
        return {
            **figures,
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "new_tokens": new_tokens,
            "runs": runs,
            **_time_generation(predictor, inputs, runs, new_tokens),
        }
    inputs = predictor.benchmark_inputs(batch=batch, tokens=tokens, **extra)
    seconds = _time_logits(predictor, inputs, warmup, runs)
    if "input_ids" in inputs:
        figures["tokens"] = int(inputs["input_ids"].shape[1])
    return {
        **figures,
        "batch": batch,
        "runs": runs,
        **percentiles(seconds),
        "examples_per_second": batch / float(np.median(seconds)),
    }


def bundle_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / (1024 * 1024)


def bench_bundle(
    folder: str | Path, *, threads: int | None = None, pm: Any = None, **options
) -> dict[str, Any]:
    """Load a bundle (hashes checked) and time it (:func:`bench_predictor`); figures in ms, MiB,
    per second, plus ``load_s``, ``size_mb`` and the process's ``peak_memory_mb``."""
    start = time.perf_counter()
    predictor = load_bundle(folder, threads=threads, pm=pm)
    load_s = time.perf_counter() - start
    figures = bench_predictor(predictor, **options)
    figures.update(
        load_s=load_s, size_mb=bundle_size_mb(Path(folder)), peak_memory_mb=peak_memory_mb()
    )
    return figures
