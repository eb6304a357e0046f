"""The parity gate: the ONNX model against the tuned PyTorch model, on the run's held-out examples.

Figures recorded (all in the manifest):

- classification: max and mean absolute logit difference, top-1 agreement, and the task metric
  (accuracy, in points) of both models;
- generation: teacher-forced next-token top-1 agreement and KL(tuned || bundle) along the tuned
  model's own greedy continuations (exact equality of greedy outputs breaks on harmless ties), and
  the task metric of both: next-token accuracy on the held-out assistant tokens (points) and loss.

The gate fails when the bundle's metric is more than ``threshold`` points below the tuned model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .reference import Reference
from .runtime.predictors import log_softmax

DEFAULT_THRESHOLD = 1.0  # metric points
#: how many examples' inputs and reference outputs the bundle keeps for ``edge verify``
VERIFY_EXAMPLES = 16
#: and at most this many bytes of their inputs (at least one example): sixteen 224 x 224 images
#: in float32 would weigh 9.6 MB, more than an int8 MobileNetV2
VERIFY_BYTES = 2 << 20


@dataclass
class ParityReport:
    metric_name: str
    tuned_metric: float
    bundle_metric: float
    threshold: float
    figures: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # parity.npz for verify

    @property
    def drop(self) -> float:
        return self.tuned_metric - self.bundle_metric

    @property
    def passed(self) -> bool:
        return self.drop <= self.threshold + 1e-9

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric_name, "tuned": self.tuned_metric, "bundle": self.bundle_metric,
                "drop_points": self.drop, "threshold_points": self.threshold, "passed": self.passed,
                "bundle_vs_tuned": self.figures}

    def table(self) -> str:
        lines = [f"  {self.metric_name}: tuned {self.tuned_metric:.2f}, bundle {self.bundle_metric:.2f} "
                 f"(drop {self.drop:.2f} points, allowed {self.threshold:.2f})"]
        lines += [f"  {key}: {value:.4g}" for key, value in self.figures.items()]
        return "\n".join(lines)


def classification_parity(predictor, reference: Reference, threshold: float) -> ParityReport:
    ref = reference.classification
    feeds = ref.feeds
    logits = np.concatenate([predictor.logits(feed) for feed in feeds])  # (N, C)
    diff = np.abs(logits - ref.logits)
    known = ref.labels >= 0
    tuned_acc = float((ref.logits.argmax(-1) == ref.labels)[known].mean() * 100) if known.any() else 0.0
    ours_acc = float((logits.argmax(-1) == ref.labels)[known].mean() * 100) if known.any() else 0.0
    figures = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
               "top1_agreement": float((logits.argmax(-1) == ref.logits.argmax(-1)).mean()),
               "examples": float(len(ref.feeds))}
    kept, used = 0, 0
    for feed in feeds[:VERIFY_EXAMPLES]:
        size = sum(value.nbytes for value in feed.values())
        if kept and used + size > VERIFY_BYTES:
            break
        kept, used = kept + 1, used + size
    arrays: dict[str, np.ndarray] = {"count": np.asarray(kept)}
    for i, feed in enumerate(feeds[:kept]):
        for key, value in feed.items():
            arrays[f"{i}.feed.{key}"] = value
        arrays[f"{i}.reference_logits"] = ref.logits[i: i + 1].astype(np.float32)
    return ParityReport("accuracy", tuned_acc, ours_acc, threshold, figures, arrays)


def generation_parity(predictor, reference: Reference, threshold: float, *, top: int = 32) -> ParityReport:
    ref = reference.generation
    # task metric: next-token accuracy on the held-out assistant tokens, one full pass each
    ours_hits, tuned_hits, ours_nll, tuned_nll = [], [], [], []
    for ids, targets, logp_ref, hits_ref in zip(ref.sequences, ref.targets, ref.token_logprobs, ref.token_hits):
        logits = predictor.logits({"input_ids": ids[None, :]})
        logits = logits[0, :-1].astype(np.float64)  # (T-1, V): position t predicts t+1
        nxt = ids[1:]
        scored = targets[1:]
        logp = log_softmax(logits)[np.arange(len(nxt)), nxt]
        ours_hits.append((logits.argmax(-1) == nxt)[scored])
        tuned_hits.append(hits_ref[scored])
        ours_nll.append(-logp[scored])
        tuned_nll.append(-logp_ref[scored])
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)
    tuned_acc = float(cat(tuned_hits).mean() * 100) if cat(tuned_hits).size else 0.0
    ours_acc = float(cat(ours_hits).mean() * 100) if cat(ours_hits).size else 0.0
    # fidelity: teacher-forced along the tuned model's own continuation, through the KV cache
    agree, kls, arrays = [], [], {"count": np.asarray(len(ref.prompts))}
    for i, (prompt, continuation, ref_logits) in enumerate(zip(ref.prompts, ref.continuations,
                                                                ref.continuation_logits)):
        ours = predictor.teacher_forced_logits(prompt, continuation).astype(np.float64)
        ref_logp = log_softmax(ref_logits.astype(np.float64))
        ours_logp = log_softmax(ours)
        agree.append(ours.argmax(-1) == ref_logits.argmax(-1))
        kls.append((np.exp(ref_logp) * (ref_logp - ours_logp)).sum(-1))
        top_ids = np.argsort(-ref_logp, axis=-1)[:, :top]
        arrays.update({f"{i}.prompt_ids": np.asarray(prompt, np.int64),
                       f"{i}.continuation": np.asarray(continuation, np.int64),
                       f"{i}.reference_top1": ref_logits.argmax(-1).astype(np.int64),
                       f"{i}.reference_top_ids": top_ids.astype(np.int32),
                       f"{i}.reference_top_logprobs": np.take_along_axis(ref_logp, top_ids, -1).astype(np.float32)})
    figures = {"top1_agreement": float(cat(agree).mean()) if agree else 0.0,
               "kl_per_token": float(cat(kls).mean()) if kls else 0.0,
               "kl_max": float(cat(kls).max()) if kls else 0.0,
               "teacher_forced_tokens": float(cat(agree).size),
               "tuned_loss": float(cat(tuned_nll).mean()) if tuned_nll else 0.0,
               "bundle_loss": float(cat(ours_nll).mean()) if ours_nll else 0.0,
               "examples": float(len(ref.sequences))}
    return ParityReport("next_token_accuracy", tuned_acc, ours_acc, threshold, figures, arrays)


def measure_parity(predictor, reference: Reference, threshold: float = DEFAULT_THRESHOLD) -> ParityReport:
    """Run the ONNX side (a runtime predictor) on the reference's inputs and compare."""
    if predictor.generates:
        return generation_parity(predictor, reference, threshold)
    return classification_parity(predictor, reference, threshold)
