"""The tuned PyTorch model (fp32, eager) timed on the bundle's own benchmark inputs, so that a
manifest puts the two side by side: same inputs, same token counts, same machine."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .runtime.bench import percentiles


def model_size_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / (1024 * 1024)


def bench_torch(
    model,
    predictor,
    *,
    tokens: int = 16,
    runs: int = 50,
    warmup: int = 5,
    new_tokens: int = 64,
    prompt_tokens: int = 32,
) -> dict[str, Any]:
    """Time ``model`` on ``predictor.benchmark_inputs``, as :func:`tunewright.edge.runtime.bench_predictor`
    times the bundle: batch-1 latency of one forward pass, or greedy tokens per second with the KV
    cache after the first token."""
    import torch

    model = model.eval()
    figures: dict[str, Any] = {"engine": "torch fp32 eager", "size_mb": model_size_mb(model)}
    with torch.inference_mode():
        if predictor.generates:
            inputs = predictor.benchmark_inputs(batch=1, tokens=prompt_tokens)
            prompt = {name: torch.from_numpy(np.asarray(value)) for name, value in inputs.items()}
            rates = []
            for _ in range(3):
                out = model(**prompt, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
                start = time.perf_counter()
                for _ in range(new_tokens - 1):
                    out = model(
                        input_ids=token, past_key_values=out.past_key_values, use_cache=True
                    )
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                rates.append((new_tokens - 1) / (time.perf_counter() - start))
            return {
                **figures,
                "prompt_tokens": int(prompt["input_ids"].shape[1]),
                "new_tokens": new_tokens,
                "tokens_per_second": float(np.median(rates)),
            }
        inputs = {
            name: torch.from_numpy(np.asarray(value))
            for name, value in predictor.benchmark_inputs(batch=1, tokens=tokens).items()
        }
        seconds = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(**inputs)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
        return {
            **figures,
            "batch": 1,
            **({"tokens": tokens} if "input_ids" in inputs else {}),
            **percentiles(seconds),
        }
