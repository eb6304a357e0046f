"""Figures of a classifier's predictions."""

from __future__ import annotations

import torch

#: the figures a classifier's ``metrics`` report, and which way each is better
LABEL_METRIC_DIRECTIONS = {
    "loss": "min",
    "accuracy": "max",
    "precision": "max",
    "recall": "max",
    "f1": "max",
}


def macro_scores(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, float]:
    """Macro precision, recall and F1 of ``predicted`` against ``labels`` (both (N,) class
    indices) over the classes that occur in either: a class absent from both says nothing."""
    precisions, recalls, f1s = [], [], []
    for c in range(classes):
        tp = int(((predicted == c) & (labels == c)).sum())
        fp = int(((predicted == c) & (labels != c)).sum())
        fn = int(((predicted != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return {"precision": mean(precisions), "recall": mean(recalls), "f1": mean(f1s)}


__all__ = ["macro_scores"]
