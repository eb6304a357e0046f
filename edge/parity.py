"""The parity gate: the bundle against the tuned PyTorch model, on the run's held-out examples.

The gate's figures come from the task's own metrics: the bundle's predictor is wrapped in a small
module (:func:`predictor_module`) that answers ``model(**batch).logits`` as the tuned model does,
and ``task.metrics`` runs on it with the same batches (``task.collate``) it ran on for the tuned
model. The gate fails when the bundle's gate metric (the task's ``metric_for(labels)`` or
``primary_metric``) is worse than the tuned model's by more than ``threshold`` points, a point
being a hundredth of the metric (a percentage point of an accuracy); the metric's direction comes
from the task's ``metric_directions``.

Fidelity figures, edge-specific, are recorded beside the metrics:

- predictors that do not generate: max and mean absolute logit difference and top-1 agreement,
  each example run alone;
- predictors that generate: teacher-forced top-1 agreement and KL(tuned || bundle) along the tuned
  model's own greedy continuations (exact equality of greedy outputs breaks on harmless ties).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reference import Reference
from .runtime.predictors import log_softmax

DEFAULT_THRESHOLD = 1.0  # metric points (hundredths of the metric)
#: how many examples' inputs and reference outputs the bundle keeps for ``edge verify``
VERIFY_EXAMPLES = 16
#: and at most this many bytes of their inputs (at least one example): sixteen 224 x 224 images
#: in float32 would weigh 9.6 MB, more than an int8 MobileNetV2
VERIFY_BYTES = 2 << 20
#: nor more than this share of the model's own bytes: verify's inputs must not double a small bundle
VERIFY_SHARE = 0.125


@dataclass
class ParityReport:
    metric_name: str
    direction: str  # "max" | "min"
    tuned_metrics: dict[str, float]
    bundle_metrics: dict[str, float]
    threshold: float  # points
    figures: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # parity.npz for verify

    @property
    def tuned_metric(self) -> float:
        return float(self.tuned_metrics[self.metric_name])

    @property
    def bundle_metric(self) -> float:
        return float(self.bundle_metrics[self.metric_name])

    @property
    def drop(self) -> float:
        """How much worse the bundle is, in points (negative: better)."""
        from tunewright import better_by

        return better_by(self.tuned_metric, self.bundle_metric, self.direction) * 100

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.bundle_metric)) and self.drop <= self.threshold + 1e-9

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric_name,
            "direction": self.direction,
            "tuned": self.tuned_metric,
            "bundle": self.bundle_metric,
            "drop_points": self.drop,
            "threshold_points": self.threshold,
            "passed": self.passed,
            "tuned_metrics": self.tuned_metrics,
            "bundle_metrics": self.bundle_metrics,
            "bundle_vs_tuned": self.figures,
        }

    def table(self) -> str:
        better = "higher" if self.direction == "max" else "lower"
        lines = [
            f"  {self.metric_name} ({better} is better): tuned {self.tuned_metric:.4f}, bundle "
            f"{self.bundle_metric:.4f} (drop {self.drop:.2f} points, allowed {self.threshold:.2f})"
        ]
        lines += [
            f"  {name}: tuned {value:.4g}, bundle {self.bundle_metrics.get(name, float('nan')):.4g}"
            for name, value in self.tuned_metrics.items()
            if name != self.metric_name
        ]
        lines += [f"  {key}: {value:.4g}" for key, value in self.figures.items()]
        return "\n".join(lines)


def predictor_module(predictor, like=None):
    """``predictor`` behind the interface ``task.metrics`` expects of a model: a ``torch.nn.Module``
    whose ``module(**batch).logits`` is a tensor shaped as the tuned model's. ``like``: the tuned
    model, whose ``config`` and ``generation_config`` the module carries (a task reads its image
    token or end tokens there).

    Each row runs alone over its unpadded positions (padding gets zero logits, which the task's
    masks skip): a bundle runs one request at a time on a device, and dynamic quantization ranges
    would otherwise depend on which rows share a batch. A predictor with ``whole_batches``
    (:class:`tunewright.edge.runtime.PredictorOptions`) gets each batch whole and does the same itself.
    """
    from types import SimpleNamespace

    import torch

    whole = bool(getattr(predictor, "whole_batches", False))

    class PredictorModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.predictor = predictor
            # tasks look up the device of the first parameter to move batches there
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
            for name in ("config", "generation_config"):
                if getattr(like, name, None) is not None:
                    setattr(self, name, getattr(like, name))

        def forward(self, **batch):
            inputs = {
                name: value.detach().cpu().numpy()
                for name, value in batch.items()
                if name != "labels" and hasattr(value, "detach")
            }
            if whole:
                return SimpleNamespace(
                    logits=torch.from_numpy(np.asarray(predictor.logits(inputs), np.float32))
                )
            mask = inputs.get("attention_mask")
            rows = next(iter(inputs.values())).shape[0]
            out = []
            for row in range(rows):
                keep = mask[row].astype(bool) if mask is not None else None
                row_inputs = {
                    name: (
                        value[row][keep]
                        if keep is not None and value.shape == mask.shape
                        else value[row]
                    )[None]
                    for name, value in inputs.items()
                }
                logits = np.asarray(predictor.logits(row_inputs))[0]  # (C,) or (n, V)
                if keep is not None and logits.ndim == 2 and logits.shape[0] == int(keep.sum()):
                    full = np.zeros((keep.shape[0], logits.shape[-1]), dtype=np.float32)  # (T, V)
                    full[keep] = logits
                    logits = full
                out.append(logits.astype(np.float32))
            return SimpleNamespace(logits=torch.from_numpy(np.stack(out)))

    return PredictorModule().eval()


def verify_budget(model_bytes: int | None) -> int:
    """Bytes of verify inputs a bundle keeps: ``VERIFY_BYTES``, or ``VERIFY_SHARE`` of a model of
    ``model_bytes`` when that is less (at least one example is kept whatever its size)."""
    return VERIFY_BYTES if not model_bytes else min(VERIFY_BYTES, int(model_bytes * VERIFY_SHARE))


def _classifier_fidelity(
    predictor, reference: Reference, budget: int = VERIFY_BYTES
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    diffs, agree = [], []
    arrays: dict[str, np.ndarray] = {}
    kept, used = 0, 0
    for index, (inputs, tuned) in enumerate(reference.example_logits):
        ours = np.asarray(predictor.logits(inputs), dtype=np.float32)
        diffs.append(np.abs(ours - tuned))
        agree.append(ours.argmax(-1) == tuned.argmax(-1))
        size = sum(np.asarray(value).nbytes for value in inputs.values())
        # verify's examples: at most VERIFY_EXAMPLES of them and ``budget`` bytes of inputs, at least one
        if kept == index and kept < VERIFY_EXAMPLES and (not kept or used + size <= budget):
            arrays.update({f"{index}.feed.{name}": value for name, value in inputs.items()})
            arrays[f"{index}.reference_logits"] = tuned.astype(np.float32)
            kept, used = kept + 1, used + size
    arrays["count"] = np.asarray(kept)
    diff = np.concatenate([d.ravel() for d in diffs]) if diffs else np.zeros(1)
    figures = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float(np.concatenate(agree).mean()) if agree else 0.0,
        "examples": float(len(diffs)),
    }
    return figures, arrays


def _generator_fidelity(
    predictor, reference: Reference, top: int = 32
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    agree, kls = [], []
    arrays: dict[str, np.ndarray] = {"count": np.asarray(len(reference.continuations))}
    for index, (prompt, continuation, tuned) in enumerate(reference.continuations):
        ours = predictor.teacher_forced_logits(prompt, continuation).astype(np.float64)  # (N, V)
        tuned_logp = log_softmax(tuned.astype(np.float64))
        agree.append(ours.argmax(-1) == tuned.argmax(-1))
        kls.append((np.exp(tuned_logp) * (tuned_logp - log_softmax(ours))).sum(-1))
        top_ids = np.argsort(-tuned_logp, axis=-1)[:, :top]
        arrays.update({f"{index}.prompt.{name}": value for name, value in prompt.items()})
        arrays.update(
            {
                f"{index}.continuation": np.asarray(continuation, np.int64),
                f"{index}.reference_top1": tuned.argmax(-1).astype(np.int64),
                f"{index}.reference_top_ids": top_ids.astype(np.int32),
                f"{index}.reference_top_logprobs": np.take_along_axis(
                    tuned_logp, top_ids, -1
                ).astype(np.float32),
            }
        )
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)
    figures = {
        "top1_agreement": float(cat(agree).mean()) if agree else 0.0,
        "kl_per_token": float(cat(kls).mean()) if kls else 0.0,
        "kl_max": float(cat(kls).max()) if kls else 0.0,
        "teacher_forced_tokens": float(cat(agree).size),
        "examples": float(len(reference.features)),
    }
    return figures, arrays


def measure_parity(
    predictor,
    reference: Reference,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    model_bytes: int | None = None,
) -> ParityReport:
    """Run the bundle's predictor on the reference's examples: the task's metrics through
    :func:`predictor_module`, then the fidelity figures the predictor's kind allows. ``model_bytes``
    (the model files' size) bounds the verify inputs kept (:func:`verify_budget`)."""
    bundle_metrics = dict(
        reference.task.metrics(
            predictor_module(predictor, like=reference.model), reference.batches()
        )
    )
    if predictor.generates:
        figures, arrays = _generator_fidelity(predictor, reference)
    else:
        figures, arrays = _classifier_fidelity(predictor, reference, verify_budget(model_bytes))
    return ParityReport(
        reference.metric,
        reference.direction,
        dict(reference.tuned_metrics),
        bundle_metrics,
        threshold,
        figures,
        arrays,
    )
