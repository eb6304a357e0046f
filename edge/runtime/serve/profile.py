"""The data profile a bundle records at export and the live one a server keeps, with a drift
figure between them.

``manifest["data_profile"]`` (written by ``export_bundle`` from the examples it was given)::

    {"examples": 32,
     "prompt_tokens": {"quantiles": {"0.1": 5, "0.25": 7, "0.5": 9, "0.75": 11, "0.9": 12},
                       "mean": 8.9, "max": 14},
     "labels": {"neg": 0.47, "pos": 0.53}}          # classifiers only

Drift is the population stability index (PSI) of the served prompt lengths over the bins the
training quantiles cut (and of the predicted labels against the training label shares):
``sum((live - train) * ln(live / train))``. Below 0.1 is usually read as no shift, above 0.25
as a large one.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
EPSILON = 1e-4  # an empty bin's share, so that the logarithm stays finite


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def length_profile(lengths: Sequence[int]) -> dict[str, Any]:
    return {
        "quantiles": {str(q): round(_quantile(lengths, q), 2) for q in QUANTILES},
        "mean": round(sum(lengths) / len(lengths), 2),
        "max": max(lengths),
    }


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def prompt_text(example: dict, codec: Any) -> str | None:
    """The text a model reads before it answers: a classifier's ``text``, a chat's messages up
    to the last assistant turn rendered with the bundle's chat format, or a ``prompt``."""
    if isinstance(example.get("text"), str):
        return example["text"]
    messages = example.get("messages")
    if isinstance(messages, list) and messages:
        if messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        flat = [{"role": m.get("role"), "content": _text_of(m.get("content"))} for m in messages]
        if codec.chat_format:
            return codec.render_chat(flat)
        return "\n".join(m["content"] for m in flat)
    if isinstance(example.get("prompt"), str):
        return example["prompt"]
    return None


def data_profile(
    folder: Path, manifest: dict[str, Any], examples: Sequence[dict]
) -> dict[str, Any] | None:
    """The profile of ``examples`` as the bundle in ``folder`` tokenizes them; ``None`` when
    nothing in them can be measured."""
    from ..text import TextCodec

    profile: dict[str, Any] = {"examples": len(examples)}
    pre = manifest.get("preprocessing") or {}
    if pre.get("tokenizer") or (Path(folder) / "tokenizer.json").is_file():
        codec = TextCodec(Path(folder), pre)
        lengths = []
        for example in examples:
            text = prompt_text(example, codec)
            if text is not None:
                lengths.append(len(codec.encode(text, truncate=False)))
        if lengths:
            profile["prompt_tokens"] = length_profile(lengths)
    labels = manifest.get("labels")
    if labels:
        names = [str(label) for label in labels]
        counts = Counter(
            names[e["label"]] if isinstance(e.get("label"), int) else str(e.get("label"))
            for e in examples
            if "label" in e
        )
        total = sum(counts.values())
        if total:
            profile["labels"] = {name: round(counts.get(name, 0) / total, 4) for name in names}
    return profile if len(profile) > 1 else None


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, EPSILON), max(a, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def _bin(value: float, edges: Sequence[float]) -> int:
    for i, edge in enumerate(edges):
        if value <= edge:
            return i
    return len(edges)


class LiveProfile:
    """What one served model has seen (the last ``window`` requests) against its bundle's profile."""

    def __init__(self, recorded: dict[str, Any] | None, window: int = 1000):
        self.recorded = recorded or {}
        self.lengths: deque[int] = deque(maxlen=window)
        self.labels: deque[str] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, *, prompt_tokens: int | None = None, label: str | None = None) -> None:
        with self._lock:
            if prompt_tokens is not None:
                self.lengths.append(prompt_tokens)
            if label is not None:
                self.labels.append(label)

    def length_psi(self) -> float | None:
        trained = (self.recorded.get("prompt_tokens") or {}).get("quantiles")
        if not trained or not self.lengths:
            return None
        edges = [float(trained[str(q)]) for q in QUANTILES if str(q) in trained]
        # the training shares of the bins the quantiles cut: 0.1, 0.15, 0.25, 0.25, 0.15, 0.1
        cuts = [0.0, *[q for q in QUANTILES if str(q) in trained], 1.0]
        expected = [b - a for a, b in pairwise(cuts)]
        with self._lock:
            counts = Counter(_bin(v, edges) for v in self.lengths)
            n = len(self.lengths)
        return psi(expected, [counts.get(i, 0) / n for i in range(len(expected))])

    def label_psi(self) -> float | None:
        trained = self.recorded.get("labels")
        if not trained or not self.labels:
            return None
        with self._lock:
            counts = Counter(self.labels)
            n = len(self.labels)
        names = list(trained)
        return psi([trained[k] for k in names], [counts.get(k, 0) / n for k in names])

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lengths = list(self.lengths)
            labels = Counter(self.labels)
        live: dict[str, Any] = {"requests": max(len(lengths), sum(labels.values()))}
        if lengths:
            live["prompt_tokens"] = length_profile(lengths)
        if labels:
            total = sum(labels.values())
            live["labels"] = {k: round(v / total, 4) for k, v in sorted(labels.items())}
        return {
            "training": self.recorded or None,
            "live": live,
            "psi": {"prompt_tokens": self.length_psi(), "labels": self.label_psi()},
        }


__all__ = ["data_profile", "LiveProfile", "psi", "length_profile", "prompt_text", "QUANTILES"]
