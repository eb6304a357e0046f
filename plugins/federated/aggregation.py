"""Aggregating low-rank adapters: what each scheme computes, in numpy, on named arrays.

A LoRA layer adds ``ΔW = B A`` (``B``: out × r, ``A``: r × in). Averaging the factors apart, as
Flower's FedAvg and FlowerTune's templates do, is not the average of the updates::

    Σ pᵢ Bᵢ Aᵢ  ≠  (Σ pᵢ Bᵢ)(Σ pᵢ Aᵢ)          (pᵢ: site i's share of the examples)

- ``fedavg``: every tensor averaged apart, weighted by examples. Exact for every update that is
  linear in its weights (heads, IA3 vectors, full fine-tuning); for LoRA it drops the cross terms.
- ``ffa`` (FFA-LoRA, https://arxiv.org/abs/2403.12313): ``A`` is frozen from a seed all sites
  share and only ``B`` trains and travels, so ``Σ pᵢ Bᵢ A = (Σ pᵢ Bᵢ) A``: the average is exact,
  at half the traffic.
- ``product`` (FlexLoRA, https://arxiv.org/abs/2402.11505): the server averages ``Bᵢ Aᵢ`` and
  factors the average back into rank ``r`` by SVD; exact when the average has rank ≤ r, otherwise
  the best rank-r approximation. ``kept`` reports, per layer, the fraction of the average's
  squared Frobenius norm the rank-r factors keep.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

SCHEMES = ("fedavg", "ffa", "product")
_LORA_A = re.compile(r"(^|\.)lora_A(\.|$)")


def lora_pairs(names: Sequence[str]) -> dict[str, str]:
    """``{A name: B name}`` for every LoRA factor pair among ``names`` (PEFT's state-dict keys)."""
    present = set(names)
    pairs = {}
    for name in names:
        if _LORA_A.search(name):
            partner = _LORA_A.sub(lambda m: f"{m.group(1)}lora_B{m.group(2)}", name)
            if partner in present:
                pairs[name] = partner
    return pairs


def is_lora_a(name: str) -> bool:
    """Whether a state-dict key names a LoRA ``A`` factor (frozen and never sent under ``ffa``)."""
    return bool(_LORA_A.search(name))


def normalised(weights: Sequence[float]) -> np.ndarray:
    """Example counts -> shares that sum to one."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be positive finite numbers, got {list(weights)}")
    return w / w.sum()


def weighted_average(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Example-weighted mean of every array, key by key; each result keeps its input dtype."""
    shares = normalised(weights)
    first = states[0]
    out = {}
    for name, value in first.items():
        total = np.zeros(value.shape, dtype=np.float64)
        for share, state in zip(shares, states):
            total += share * np.asarray(state[name], dtype=np.float64)
        out[name] = total.astype(value.dtype)
    return out


def product_average(
    states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """FlexLoRA: ``ΔW = Σ pᵢ Bᵢ Aᵢ`` per LoRA pair, factored back to the pair's rank by SVD.

    The factors split the singular values evenly (``B = U √S``, ``A = √S Vᵀ``) so that neither grows
    round after round. Tensors that are not LoRA factors are averaged plainly. Returns the new state
    and, per A name, the fraction of ``‖ΔW‖²`` that the rank-r factors keep (1.0 when exact).
    """
    shares = normalised(weights)
    first = states[0]
    pairs = lora_pairs(list(first))
    factors = set(pairs) | set(pairs.values())
    out = weighted_average(
        [{k: v for k, v in s.items() if k not in factors} for s in states], weights
    )
    kept: dict[str, float] = {}
    for a_name, b_name in pairs.items():
        rank = first[a_name].shape[0]  # A: (r, in), B: (out, r)
        delta = sum(
            share * (np.asarray(s[b_name], np.float64) @ np.asarray(s[a_name], np.float64))
            for share, s in zip(shares, states)
        )  # (out, in)
        u, sigma, vt = np.linalg.svd(delta, full_matrices=False)  # (out, k), (k,), (k, in)
        root = np.sqrt(sigma[:rank])
        b = u[:, :rank] * root  # (out, r)
        a = root[:, None] * vt[:rank]  # (r, in)
        if b.shape[1] < rank:  # fewer singular values than the rank: pad with zeros, shapes stay
            b = np.pad(b, ((0, 0), (0, rank - b.shape[1])))
            a = np.pad(a, ((0, rank - a.shape[0]), (0, 0)))
        energy = float(np.sum(sigma**2))
        kept[a_name] = float(np.sum(sigma[:rank] ** 2) / energy) if energy > 0 else 1.0
        out[a_name] = a.astype(first[a_name].dtype)
        out[b_name] = b.astype(first[b_name].dtype)
    return {name: out[name] for name in first}, kept


def aggregate(
    scheme: str, states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Aggregate the sites' states with ``scheme``; returns the state and what it reports
    (``product``: ``kept_min`` and ``kept_mean`` over the LoRA layers)."""
    if not states:
        raise ValueError("nothing to aggregate: no site's state")
    if scheme in ("fedavg", "ffa"):
        # under ffa the A factors never travel: what arrives is B and the head, averaged exactly
        return weighted_average(states, weights), {}
    if scheme == "product":
        state, kept = product_average(states, weights)
        values = list(kept.values()) or [1.0]
        return state, {"kept_min": min(values), "kept_mean": float(np.mean(values))}
    raise ValueError(f"unknown aggregation {scheme!r} (known: {', '.join(SCHEMES)})")
