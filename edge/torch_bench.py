"""The tuned PyTorch model (fp32, eager) measured the way the bundle's benchmark measures a bundle,
so a manifest can put the two side by side: same prompt, same token counts, same machine."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .runtime.bench import SAMPLE_TEXT, percentiles


def model_size_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / (1024 * 1024)


def bench_torch(model, tokenizer, task_kind: str, *, tokens: int = 16, runs: int = 50, warmup: int = 5,
                new_tokens: int = 64, prompt_tokens: int = 32) -> dict[str, Any] | None:
    """Batch-1 latency (classifiers) or greedy tokens per second with the KV cache (generators)."""
    import torch

    model = model.eval()
    with torch.inference_mode():
        if task_kind == "image_classification":
            from .preprocessing import image_preprocessing

            size = image_preprocessing(tokenizer)["size"]
            pixels = torch.from_numpy(np.random.default_rng(0).standard_normal(
                (1, 3, size["height"], size["width"])).astype(np.float32))  # (1, 3, H, W)
            seconds = []
            for i in range(warmup + runs):
                start = time.perf_counter()
                model(pixel_values=pixels)
                if i >= warmup:
                    seconds.append(time.perf_counter() - start)
            return {"engine": "torch fp32 eager", "batch": 1, "image": [size["height"], size["width"]],
                    **_percentiles(seconds), "size_mb": model_size_mb(model)}
        if task_kind == "sequence_classification":
            ids = tokenizer(SAMPLE_TEXT, add_special_tokens=True)["input_ids"]
            ids = torch.tensor([ids[: tokens - 1] + ids[-1:]])  # (1, tokens) with the closing special token
            feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            seconds = []
            for i in range(warmup + runs):
                start = time.perf_counter()
                model(**feeds)
                if i >= warmup:
                    seconds.append(time.perf_counter() - start)
            return {"engine": "torch fp32 eager", "batch": 1, "tokens": tokens, **percentiles(seconds),
                    "size_mb": model_size_mb(model)}
        if task_kind == "causal_lm":
            prompt = torch.tensor([tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"][:prompt_tokens]])
            rates = []
            for _ in range(3):
                out = model(input_ids=prompt, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
                start = time.perf_counter()
                for _ in range(new_tokens - 1):
                    out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                rates.append((new_tokens - 1) / (time.perf_counter() - start))
            return {"engine": "torch fp32 eager", "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                    "tokens_per_second": float(np.median(rates)), "size_mb": model_size_mb(model)}
    return None
