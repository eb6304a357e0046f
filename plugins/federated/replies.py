"""Checking a site's reply before it is aggregated.

Flower's own averaging checks nothing: different keys end the run, a NaN spreads into the model
and numpy broadcasting turns a rank-1 array into a rank-r one without a word. Every reply is
checked against what the server sent (names, shapes, dtypes, finite values, a positive example
count); a reply with a problem is left out of the round and named with its problems.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def describe(state: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}``: what a reply must match."""
    return {
        name: (tuple(np.shape(value)), str(np.asarray(value).dtype))
        for name, value in state.items()
    }


def reply_problems(
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    state: Mapping[str, np.ndarray],
    num_examples: object,
) -> list[str]:
    """Every way ``state`` differs from ``expected``; an empty list means the reply is usable."""
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(
            f"missing {len(missing)} array(s): {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    if unexpected:
        problems.append(
            f"unexpected array(s): {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
        )
    for name in sorted(set(expected) & set(state)):
        shape, dtype = expected[name]
        value = np.asarray(state[name])
        if tuple(value.shape) != shape:
            problems.append(f"{name}: shape {tuple(value.shape)}, expected {shape}")
            continue
        if str(value.dtype) != dtype:
            problems.append(f"{name}: dtype {value.dtype}, expected {dtype}")
            continue
        if value.dtype.kind in "fc":
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if bad:
                problems.append(f"{name}: {bad} non-finite value(s) (NaN or inf)")
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, (int, float))
        or not math.isfinite(num_examples)
        or num_examples <= 0
    ):
        problems.append(f"num-examples is {num_examples!r}, expected a positive number")
    return problems
