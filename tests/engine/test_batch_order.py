"""training.batch_order with group_by_length: batches of like lengths, in no length order.

In length order (the longest batch first, the shortest last) the training loss of a model that
learns nothing would still move with the length of each step's examples: the quickstart's curve
rose from about 1.7 to 2.9 while the validation loss fell."""

from __future__ import annotations

import random
import statistics

from tunewright.training import MEGABATCH, batch_order


def features(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": [0] * rng.randint(8, 400)} for _ in range(n)]


def length(feature: dict) -> int:
    return len(feature["input_ids"])


def rank_correlation(xs: list[float], ys: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    return statistics.correlation(ranks(xs), ranks(ys))


def test_grouped_batches_hold_like_lengths_longest_first_in_no_length_order():
    data = features(
        8 * MEGABATCH
    )  # one megabatch: the case of a short run such as the quickstart's
    batches = batch_order(data, 8, 7, 0, True, length)
    assert sorted(i for b in batches for i in b) == list(range(len(data)))  # each example once
    longest = [max(length(data[i]) for i in b) for b in batches]
    assert longest[0] == max(longest)  # out of memory at once, if at all
    # little padding: batches are cut from a length-sorted megabatch
    padded = sum(len(b) * m for b, m in zip(batches, longest))
    assert sum(length(f) for f in data) / padded > 0.95
    # ... but they come in no length order: the rank correlation of step and length is near 0
    # (it was -1 in length order)
    assert (
        abs(rank_correlation(list(range(1, len(batches))), [float(m) for m in longest[1:]])) < 0.35
    )
    assert (
        batch_order(data, 8, 7, 0, True, length) == batches
    )  # the same for the same seed and epoch
    assert batch_order(data, 8, 7, 1, True, length) != batches


def test_a_loss_that_follows_length_alone_draws_a_flat_curve():
    """A model that learns nothing, whose per-token loss is lower on longer examples (as a chat
    model's is: a long answer has more context): the first and last fifths of the epoch's steps
    average the same loss, where in length order the loss rose by half."""
    data = features(8 * MEGABATCH, seed=1)
    batches = batch_order(data, 8, 3, 0, True, length)
    losses = [statistics.mean(3.0 - length(data[i]) / 300 for i in b) for b in batches]
    fifth = len(losses) // 5
    first, last = statistics.mean(losses[:fifth]), statistics.mean(losses[-fifth:])
    assert abs(last - first) < 0.25 * statistics.pstdev(losses) + 0.05
    in_length_order = sorted(losses)
    assert (
        statistics.mean(in_length_order[-fifth:]) - statistics.mean(in_length_order[:fifth]) > 1.0
    )
