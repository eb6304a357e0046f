"""Splitting one dataset into sites, for simulation: IID, Dirichlet non-IID by label, or by a field.

Every function returns one list of example indices per site, seeded and deterministic, and never
leaves a site empty. Non-IID by label follows Hsu et al. (https://arxiv.org/abs/1909.06335): for
each label, the share each site gets is drawn from ``Dirichlet(alpha)``; small ``alpha`` gives each
site a few dominant labels, large ``alpha`` approaches IID.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from tunewright import ConfigError


def iid(count: int, sites: int, seed: int) -> list[list[int]]:
    """Shuffle, then deal the examples out in turn: site sizes differ by one at most."""
    _enough(count, sites)
    order = np.random.default_rng(seed).permutation(count)
    return [sorted(int(i) for i in order[k::sites]) for k in range(sites)]


def dirichlet(
    keys: Sequence[str], sites: int, seed: int, alpha: float, every_key_everywhere: bool = False
) -> list[list[int]]:
    """Per key, site shares drawn from ``Dirichlet(alpha)``.

    ``every_key_everywhere`` first gives each site one example of every key (a classification
    site's head must know every label), then splits the rest.
    """
    _enough(len(keys), sites)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    parts: list[list[int]] = [[] for _ in range(sites)]
    for key in sorted(groups):
        members = list(rng.permutation(groups[key]))
        if every_key_everywhere:
            if len(members) < sites:
                raise ConfigError(
                    f"federated.partition: label {key!r} has {len(members)} example(s), fewer than "
                    f"the {sites} sites; every site needs each label once (its model's head is "
                    "built from the labels it sees)"
                )
            for k in range(sites):
                parts[k].append(int(members.pop()))
        shares = rng.dirichlet(np.full(sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
        for k, chunk in enumerate(np.split(np.asarray(members, dtype=int), cuts)):
            parts[k].extend(int(i) for i in chunk)
    # a very skewed draw can leave a site empty: give it one example from the largest site
    for k in range(sites):
        if not parts[k]:
            donor = max(range(sites), key=lambda j: len(parts[j]))
            parts[k].append(parts[donor].pop())
    return [sorted(p) for p in parts]


def by_field(
    values: Sequence[str], sites: int, field: str
) -> tuple[list[list[int]], list[list[str]]]:
    """Whole groups of one field value per site; with more values than sites, the largest groups
    go first, each to the site with the fewest examples so far. Returns the parts and the values
    each site holds."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, value in enumerate(values):
        groups[value].append(index)
    if len(groups) < sites:
        raise ConfigError(
            f"federated.partition_field: {field!r} has {len(groups)} distinct value(s) "
            f"({', '.join(sorted(groups)[:5])}), fewer than federated.sites ({sites})"
        )
    parts: list[list[int]] = [[] for _ in range(sites)]
    held: list[list[str]] = [[] for _ in range(sites)]
    for value in sorted(groups, key=lambda v: (-len(groups[v]), v)):
        k = min(range(sites), key=lambda j: (len(parts[j]), j))
        parts[k].extend(groups[value])
        held[k].append(value)
    return [sorted(p) for p in parts], held


def field_values(
    examples: Sequence[dict], field: str, key_fn: Callable[[dict], str | None] | None = None
) -> list[str]:
    """The grouping value of every example: ``example[field]``, or ``key_fn(example)`` when no field
    is named. A missing value is a :class:`tunewright.ConfigError` naming the first such example."""
    out = []
    for i, example in enumerate(examples):
        value = example.get(field) if field else (key_fn(example) if key_fn else None)
        if value is None:
            what = f"field {field!r}" if field else "a label"
            raise ConfigError(
                f"federated.partition: training example {i + 1} has no {what} to group sites by"
                f"{'' if field else '; set federated.partition_field'}"
            )
        out.append(str(value))
    return out


def _enough(count: int, sites: int) -> None:
    if count < sites:
        raise ConfigError(
            f"federated.sites: {sites} sites but only {count} training example(s); "
            "every site needs at least one"
        )
