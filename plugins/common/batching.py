"""Padding token ids into a batch, and the device a model takes its inputs on."""

from __future__ import annotations

from typing import Any

import torch

#: the label of a position no loss is computed on (PyTorch's cross-entropy default)
IGNORE = -100


def pad(sequences: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to the longest one: a (B, T) long tensor."""
    width = max(len(s) for s in sequences)
    rows = [
        (s + [value] * (width - len(s))) if side == "right" else ([value] * (width - len(s)) + s)
        for s in sequences
    ]
    return torch.tensor(rows, dtype=torch.long)


def model_device(model: Any) -> torch.device:
    """Where the model's inputs must go; the CPU for a model without parameters (an ONNX
    session behind a torch-like adapter)."""
    parameters = getattr(model, "parameters", None)
    if parameters is None:
        return torch.device("cpu")
    first = next(iter(parameters()), None)
    return first.device if first is not None else torch.device("cpu")
