"""Splitting held-out data off the training data, and balancing groups, the same way for a seed.

Stratification follows the task: ``task.stratify_key(example)`` names the group an example belongs
to (its label for classification); a task without one, or examples without a group, are split
without stratification.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from ..errors import DataError

Key = Callable[[dict], "str | None"]


def _groups(examples: Sequence[dict], key: Key | None) -> dict[str, list[int]] | None:
    """Example indices by group, or ``None`` when the examples are not all in a group."""
    if key is None or not examples:
        return None
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        name = key(example)
        if name is None:
            return None
        groups.setdefault(str(name), []).append(i)
    return groups


def split(
    examples: Sequence[dict], fraction: float, seed: int, key: Key | None = None
) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the examples (at least one when ``fraction > 0`` and there are
    two or more), the same way for the same seed.

    With ``key`` (the task's ``stratify_key``), each group keeps its proportion in both parts and
    every group keeps at least one training example. Both parts keep the examples' order.
    """
    kept, held = split_indices(examples, fraction, seed, key)
    return [examples[i] for i in kept], [examples[i] for i in held]


def split_indices(
    examples: Sequence[dict], fraction: float, seed: int, key: Key | None = None
) -> tuple[list[int], list[int]]:
    n = len(examples)
    if not fraction or fraction <= 0 or n < 2:
        return list(range(n)), []
    if fraction >= 1:
        raise ValueError(f"a split fraction must be below 1, got {fraction}")
    target = max(1, min(n - 1, round(n * fraction)))
    rng = random.Random(seed)
    groups = _groups(examples, key)
    if groups is None:
        order = list(range(n))
        rng.shuffle(order)
        held = order[:target]
    else:
        names = sorted(groups)
        for name in names:
            rng.shuffle(groups[name])
        exact = {name: len(groups[name]) * target / n for name in names}
        cap = {name: len(groups[name]) - 1 for name in names}  # every group keeps one to train on
        quota = {name: min(math.floor(exact[name]), cap[name]) for name in names}
        remaining = target - sum(quota.values())
        while remaining > 0:
            open_ = [name for name in names if quota[name] < cap[name]]
            if not open_:
                break
            best = max(open_, key=lambda name: (exact[name] - quota[name], -names.index(name)))
            quota[best] += 1
            remaining -= 1
        held = [i for name in names for i in groups[name][: quota[name]]]
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held_set)


def balance(examples: Sequence[dict], mode: str, seed: int, key: Key | None) -> list[dict]:
    """Resample examples so that every group (the task's ``stratify_key``) is equally frequent.

    ``"oversample"``: every group grows to the largest one's count (whole copies first, then a
    seeded draw without repetition); ``"undersample"``: every group shrinks to the smallest one's
    count (a seeded draw); ``"none"``: unchanged. The originals keep their order; added copies
    follow them. Raises :class:`tunewright.DataError` for examples without groups.
    """
    return [examples[i] for i in balance_indices(examples, mode, seed, key)]


def balance_indices(examples: Sequence[dict], mode: str, seed: int, key: Key | None) -> list[int]:
    if mode == "none":
        return list(range(len(examples)))
    if mode not in ("oversample", "undersample"):
        raise DataError(
            f"data.balance: unknown mode {mode!r} (allowed: none, oversample, undersample)"
        )
    groups = _groups(examples, key)
    if groups is None:
        raise DataError(
            f"data.balance: {mode} needs examples the task groups by label; this "
            "task or data has none (allowed here: none)"
        )
    rng = random.Random(seed)
    names = sorted(groups)
    if mode == "undersample":
        smallest = min(len(g) for g in groups.values())
        return sorted(i for name in names for i in rng.sample(groups[name], smallest))
    largest = max(len(g) for g in groups.values())
    extra = []
    for name in names:
        group = groups[name]
        copies, rest = divmod(largest - len(group), len(group))
        extra += group * copies + sorted(rng.sample(group, rest))
    return list(range(len(examples))) + extra


__all__ = ["split", "split_indices", "balance", "balance_indices"]
