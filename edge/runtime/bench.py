"""``bench``: batch-1 latency (p50/p95), throughput and peak memory of a bundle on this machine."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_TEXT = ("the quick brown fox jumps over the lazy dog while the band plays a slow song "
               "about rivers, mountains and the long road home ") * 8


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


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    # min beside the percentiles: on a shared machine it shows what the model costs without contention
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean()), "min_ms": float(values.min())}


def _time_logits(predictor, feeds, warmup: int, runs: int) -> list[float]:
    """Seconds per call of ``predictor.logits(feeds)`` over ``runs`` calls after ``warmup``."""
    for _ in range(warmup):
        predictor.logits(feeds)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor.logits(feeds)
        seconds.append(time.perf_counter() - start)
    return seconds


def classifier_ids(codec, tokens: int) -> list[int]:
    """Exactly ``tokens`` ids of ordinary text, special tokens included."""
    ids = codec.encode(SAMPLE_TEXT, truncate=False)
    return ids[: tokens - 1] + ids[-1:] if codec.add_special_tokens else ids[:tokens]


def bench_predictor(predictor, manifest: dict, *, tokens: int = 16, batch: int = 1, runs: int = 50,
                    warmup: int = 5, new_tokens: int = 64, prompt_tokens: int = 32) -> dict[str, Any]:
    kind = manifest["task_kind"]
    if kind == "sequence_classification":
        feeds = predictor.feeds([classifier_ids(predictor.codec, tokens)] * batch)
        seconds = _time_logits(predictor, feeds, warmup, runs)
        stats = _percentiles(seconds)
        return {"kind": kind, "batch": batch, "tokens": tokens, "runs": runs, **stats,
                "examples_per_second": batch / float(np.median(seconds))}
    if kind == "image_classification":
        from PIL import Image

        size = manifest["preprocessing"]["size"]
        image = Image.fromarray((np.random.default_rng(0).random((size["height"], size["width"], 3)) * 255)
                                .astype(np.uint8))
        feeds = {predictor.input_name: predictor.pixel_values([image] * batch)}
        seconds = _time_logits(predictor, feeds, warmup, runs)
        return {"kind": kind, "batch": batch, "runs": runs, **_percentiles(seconds),
                "examples_per_second": batch / float(np.median(seconds))}
    # generation: a fixed prompt, then new_tokens greedy tokens without stopping at eos
    prompt = predictor.codec.encode(SAMPLE_TEXT, add_special_tokens=False, truncate=False)[:prompt_tokens]
    list(predictor.generate_ids(prompt, max_new_tokens=4, stop_at_eos=False))  # warm up
    runs = max(1, min(runs, 3))
    rates, firsts, totals = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        first = None
        count = 0
        for _token in predictor.generate_ids(prompt, max_new_tokens=new_tokens, stop_at_eos=False):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        firsts.append(first - start)
        totals.append(end - start)
        rates.append((count - 1) / (end - first) if count > 1 else 0.0)
    return {"kind": kind, "prompt_tokens": len(prompt), "new_tokens": new_tokens, "runs": runs,
            "tokens_per_second": float(np.median(rates)),
            "first_token_ms": float(np.median(firsts) * 1000),
            "ms_per_token": float(1000 / np.median(rates)) if np.median(rates) else None,
            "total_s": float(np.median(totals))}


def bundle_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / (1024 * 1024)


def bench_bundle(folder: str | Path, *, threads: int | None = None, **options) -> dict[str, Any]:
    """Load a bundle (hashes checked) and time it; figures in ms, MiB, per second."""
    from . import load_bundle

    start = time.perf_counter()
    predictor = load_bundle(folder, threads=threads)
    load_s = time.perf_counter() - start
    figures = bench_predictor(predictor, predictor.manifest, **options)
    figures.update(load_s=load_s, size_mb=bundle_size_mb(Path(folder)), peak_memory_mb=peak_memory_mb())
    return figures
