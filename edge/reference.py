"""Held-out examples turned into model inputs by the task, and what the tuned PyTorch model makes of them.

This is the PyTorch side of the parity gate (:mod:`tunewright.edge.parity` is the bundle side).
Everything goes through the task, as training and evaluation did:

- ``task.tokenize`` turns each held-out example into features and ``task.collate`` into batches;
- ``task.metrics(model, batches)`` gives the tuned model's figures, with the same code that gave the
  run's ``eval.json`` (the bundle's figures come from the same call on the bundle);
- for fidelity, each example's inputs alone (batch 1) with the tuned model's logits on them, and,
  for models that generate, the tuned model's own greedy continuation of the prompt (the features
  before the last run of trained tokens) with its logits at every step.

The fidelity parts are computed on first use and kept, so ``--quantize auto`` pays for them once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

IGNORE = -100


def gate_metric(task, labels) -> tuple[str, str]:
    """The metric the gate watches and its direction ("max" or "min"): the engine's one rule,
    :func:`tunewright.primary_metric` (``task.metric_for(labels)`` when the task has it, else
    ``task.primary_metric``; the direction from ``task.metric_directions``)."""
    from tunewright import primary_metric

    return primary_metric(task, labels)


def as_numpy(batch: dict) -> dict[str, np.ndarray]:
    """Model inputs of a collated batch as numpy arrays, ``labels`` left out."""
    return {
        name: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        for name, value in batch.items()
        if name != "labels"
    }


def prompt_of(features: dict) -> dict[str, Any] | None:
    """The features of a generation example before its last run of trained tokens (its last
    reply): sequence features cut there, the others (pixel values...) kept whole. ``None`` when
    nothing is trained or nothing precedes it."""
    ids = list(features["input_ids"])
    labels = features.get("labels")
    if labels is None or len(labels) != len(ids):
        return None
    trained = [int(label) != IGNORE for label in labels]
    end = len(trained)
    while end > 0 and not trained[end - 1]:
        end -= 1
    start = end
    while start > 0 and trained[start - 1]:
        start -= 1
    if start == 0 or end == 0:
        return None
    cut = {}
    for name, value in features.items():
        if name == "labels":
            continue
        is_sequence = (
            hasattr(value, "__len__")
            and not isinstance(value, (str, bytes))
            and len(value) == len(ids)
            and np.ndim(value) == 1
        )
        cut[name] = list(value)[:start] if is_sequence else value
    return cut


def _torch_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(**{name: torch.from_numpy(np.asarray(value)) for name, value in inputs.items()})
    logits = (
        out.logits
        if hasattr(out, "logits")
        else (out[0] if isinstance(out, (tuple, list)) else out)
    )
    return logits.float().numpy()


def greedy_continuation(
    model, prompt: dict[str, np.ndarray], new_tokens: int
) -> tuple[list[int], np.ndarray]:
    """The tuned model's greedy continuation of ``prompt`` (batch-1 model inputs; eos not special:
    the gate wants ``new_tokens`` positions) and its logits predicting each token, (new_tokens, V)."""
    import torch

    tokens, rows = [], []
    # one unpadded row: no attention mask needed, and later steps take the new token alone
    inputs = {
        name: torch.from_numpy(np.asarray(value))
        for name, value in prompt.items()
        if name != "attention_mask"
    }
    with torch.inference_mode():
        out = model(**inputs, use_cache=True)
        for _ in range(new_tokens):
            last = out.logits[0, -1].float()  # (V,)
            rows.append(last.numpy().copy())
            token = int(last.argmax())
            tokens.append(token)
            out = model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    return tokens, np.stack(rows)


@dataclass
class Reference:
    """The tuned model on the held-out examples: its task metrics, and what fidelity needs."""

    model: Any
    task: Any
    tokenizer: Any
    features: list[dict]
    metric: str
    direction: str
    batch_size: int = 8
    fidelity_examples: int = 8
    new_tokens: int = 32
    tuned_metrics: dict[str, float] = field(default_factory=dict)
    #: features quantizers calibrate on (training examples); empty: the held-out ones
    calibration_features: list[dict] = field(default_factory=list)

    def batches(self):
        """The held-out features collated by the task, ``batch_size`` at a time (a fresh iterator)."""
        for start in range(0, len(self.features), self.batch_size):
            yield self.task.collate(self.features[start : start + self.batch_size], self.tokenizer)

    def example_inputs(self, index: int) -> dict[str, np.ndarray]:
        """Example ``index`` alone as model inputs (batch 1, numpy), as the task collates it."""
        return as_numpy(self.task.collate([self.features[index]], self.tokenizer))

    @cached_property
    def example_logits(self) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
        """``(inputs, tuned logits)`` of every example alone: classifier fidelity."""
        out = []
        for index in range(len(self.features)):
            inputs = self.example_inputs(index)
            out.append((inputs, _torch_logits(self.model, inputs)))
        return out

    @cached_property
    def continuations(self) -> list[tuple[dict[str, np.ndarray], list[int], np.ndarray]]:
        """``(prompt inputs, greedy continuation, tuned logits (N, V))`` for up to
        ``fidelity_examples`` examples that have a prompt: generator fidelity."""
        out = []
        for features in self.features:
            if len(out) >= self.fidelity_examples:
                break
            prompt = prompt_of(features)
            if prompt is None:
                continue
            inputs = as_numpy(
                self.task.collate(
                    [{**prompt, "labels": [IGNORE] * len(prompt["input_ids"])}], self.tokenizer
                )
            )
            tokens, logits = greedy_continuation(self.model, inputs, self.new_tokens)
            out.append((inputs, tokens, logits))
        return out

    @property
    def calibration_source(self) -> str:
        """Where :meth:`calibration` draws from: ``"training"`` or ``"held-out"`` examples."""
        return "training" if self.calibration_features else "held-out"

    def calibration(self, count: int = 64) -> list[dict[str, np.ndarray]]:
        """Model inputs of up to ``count`` examples, one each, for quantizers that calibrate: the
        training examples given to :func:`build_reference`, else the held-out ones."""
        features = self.calibration_features or self.features
        return [
            as_numpy(self.task.collate([features[i]], self.tokenizer))
            for i in range(min(count, len(features)))
        ]


def build_reference(
    model,
    tokenizer,
    task,
    examples: list[dict],
    *,
    labels=None,
    max_examples: int = 256,
    fidelity_examples: int = 8,
    new_tokens: int = 32,
    batch_size: int = 8,
    calibration_examples: list[dict] | None = None,
    calibration_count: int = 64,
) -> Reference:
    """Tokenize up to ``max_examples`` held-out examples with the task and compute the tuned
    model's task metrics on them (``model`` in eval mode, as exported); tokenize up to
    ``calibration_count`` of ``calibration_examples`` (training examples) for quantizers that
    calibrate."""
    model.eval()
    features = [
        task.tokenize(example, tokenizer, labels=labels) for example in examples[:max_examples]
    ]
    calibration = [
        task.tokenize(example, tokenizer, labels=labels)
        for example in (calibration_examples or [])[:calibration_count]
    ]
    metric, direction = gate_metric(task, labels)
    reference = Reference(
        model,
        task,
        tokenizer,
        features,
        metric,
        direction,
        batch_size=batch_size,
        fidelity_examples=fidelity_examples,
        new_tokens=new_tokens,
        calibration_features=calibration,
    )
    reference.tuned_metrics = dict(task.metrics(model, reference.batches()))
    if metric not in reference.tuned_metrics:
        from tunewright import UsageError

        raise UsageError(
            f"the parity gate watches {metric!r}, which the task's metrics do not report "
            f"(they report {', '.join(sorted(reference.tuned_metrics))})"
        )
    return reference
