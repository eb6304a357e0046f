"""Splitting one dataset into sites."""

import numpy as np
import pytest

from tunewright import ConfigError
from tunewright.plugins.federated.partition import by_field, dirichlet, field_values, iid


def test_iid_covers_everything_once_in_equal_parts():
    parts = iid(10, 3, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(10))
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    assert parts == iid(10, 3, seed=0) and parts != iid(10, 3, seed=1)


def test_dirichlet_skews_labels_more_as_alpha_shrinks():
    keys = [str(i % 4) for i in range(400)]

    def skew(alpha):
        parts = dirichlet(keys, 3, seed=0, alpha=alpha)
        assert sorted(i for p in parts for i in p) == list(range(400))
        # mean share of each site's most frequent label
        return np.mean(
            [max(np.bincount([int(keys[i]) for i in p], minlength=4)) / len(p) for p in parts]
        )

    assert skew(0.1) > skew(100.0) + 0.2
    assert skew(100.0) < 0.4


def test_dirichlet_can_give_every_site_every_label():
    keys = ["a"] * 50 + ["b"] * 3 + ["c"] * 40
    parts = dirichlet(keys, 3, seed=4, alpha=0.05, every_key_everywhere=True)
    for p in parts:
        assert {keys[i] for i in p} == {"a", "b", "c"}
    with pytest.raises(ConfigError, match="label 'b' has 3 example"):
        dirichlet(keys, 4, seed=0, alpha=1.0, every_key_everywhere=True)


def test_by_field_keeps_groups_whole():
    values = ["food"] * 5 + ["sports"] * 3 + ["money"] * 2 + ["ai"] * 1
    parts, held = by_field(values, 3, "category")
    for part, names in zip(parts, held):
        assert {values[i] for i in part} == set(names)
    assert sorted(i for p in parts for i in p) == list(range(len(values)))
    with pytest.raises(ConfigError, match="'category' has 4 distinct value"):
        by_field(values, 5, "category")


def test_field_values_names_the_example_without_one():
    with pytest.raises(ConfigError, match="example 2 has no field 'category'"):
        field_values([{"category": "a"}, {}], "category")


def test_too_few_examples():
    with pytest.raises(ConfigError, match="3 sites but only 2"):
        iid(2, 3, seed=0)
