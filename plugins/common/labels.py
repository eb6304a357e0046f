"""The rules of class labels, for every task that predicts one: blank labels, the order of label
names, and held-out labels that the training data never had."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tunewright import Problem

_WHOLE = re.compile(r"-?\d+")


def is_blank(label: Any) -> bool:
    """No label at all: missing, ``null`` or blank text."""
    return label is None or (isinstance(label, str) and not label.strip())


def sort_labels(names: Iterable[str]) -> list[str]:
    """Label names in numeric order when every one is a whole number (``2`` before ``10``),
    else in text order."""
    names = set(names)
    if all(_WHOLE.fullmatch(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def unseen_labels(
    labelled: Iterable[tuple[Any, str]],
    known: Iterable[str],
    *,
    name=str,
    where: str = "in the training data",
) -> list[Problem]:
    """A problem at each ``(label, location)`` whose label (``name(label)``) is not among the
    ``known`` training labels: a class the head never saw cannot be predicted."""
    known = {str(label) for label in known}
    shown = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
    return [
        Problem(location, f"label {label!r} does not occur {where} (training labels: {shown})")
        for label, location in labelled
        if name(label) not in known
    ]


def label_counts_line(counts: dict[str, int]) -> str:
    """``labels: cat 12, dog 9, ...``: the first 20 labels and their counts, for a report."""
    shown = ", ".join(f"{name} {count:,}" for name, count in list(counts.items())[:20])
    return f"labels: {shown}{', ...' if len(counts) > 20 else ''}"


__all__ = ["is_blank", "sort_labels", "unseen_labels", "label_counts_line"]
