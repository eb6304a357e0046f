"""The aggregation maths on small tensors: what each scheme computes and when it is exact."""

import numpy as np
import pytest

from tunewright.plugins.federated.aggregation import (
    aggregate,
    lora_pairs,
    product_average,
    weighted_average,
)

A = "base_model.model.layers.0.q_proj.lora_A.weight"
B = "base_model.model.layers.0.q_proj.lora_B.weight"
HEAD = "base_model.model.score.modules_to_save.weight"


def site(rng, rank=2, out=5, inp=4, shared_a=None):
    a = shared_a if shared_a is not None else rng.normal(size=(rank, inp)).astype(np.float32)
    return {
        A: a,
        B: rng.normal(size=(out, rank)).astype(np.float32),
        HEAD: rng.normal(size=(3, out)).astype(np.float32),
    }


def test_pairs_found_by_name():
    assert lora_pairs([A, B, HEAD]) == {A: B}
    assert lora_pairs([A, HEAD]) == {}


def test_fedavg_is_weighted_by_examples():
    s1 = {"w": np.array([0.0, 0.0], np.float32)}
    s2 = {"w": np.array([3.0, 6.0], np.float32)}
    out = weighted_average([s1, s2], [1, 2])
    np.testing.assert_allclose(out["w"], [2.0, 4.0])
    assert out["w"].dtype == np.float32


def test_fedavg_of_factors_is_not_the_average_update():
    rng = np.random.default_rng(0)
    states, weights = [site(rng), site(rng)], [3, 1]
    avg, _ = aggregate("fedavg", states, weights)
    true = sum(w / 4 * s[B] @ s[A] for w, s in zip(weights, states))
    assert np.abs(avg[B] @ avg[A] - true).max() > 0.1


def test_ffa_average_is_exact_when_a_is_shared():
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(2, 4)).astype(np.float32)
    states, weights = [site(rng, shared_a=shared) for _ in range(3)], [5, 1, 2]
    travelled = [{k: v for k, v in s.items() if k != A} for s in states]  # A never travels
    avg, info = aggregate("ffa", travelled, weights)
    assert A not in avg and info == {}
    true = sum(w / 8 * s[B] @ shared for w, s in zip(weights, states))
    np.testing.assert_allclose(avg[B] @ shared, true, atol=1e-5)


def test_product_is_exact_when_the_average_fits_the_rank():
    rng = np.random.default_rng(2)
    shared = rng.normal(size=(2, 4)).astype(np.float32)
    states, weights = [site(rng, shared_a=shared) for _ in range(3)], [1, 1, 2]
    avg, info = aggregate("product", states, weights)
    true = sum(w / 4 * s[B] @ s[A] for w, s in zip(weights, states))
    np.testing.assert_allclose(avg[B] @ avg[A], true, atol=1e-5)
    assert info["kept_min"] == pytest.approx(1.0)
    assert avg[A].shape == (2, 4) and avg[B].shape == (5, 2) and avg[A].dtype == np.float32


def test_product_keeps_the_best_rank_r_part_and_reports_it():
    rng = np.random.default_rng(3)
    states, weights = [site(rng) for _ in range(3)], [1, 2, 3]
    avg, kept = product_average(states, weights)
    true = sum(w / 6 * s[B] @ s[A] for w, s in zip(weights, states))  # rank up to 4 > r = 2
    sigma = np.linalg.svd(true, compute_uv=False)
    expected = (sigma[:2] ** 2).sum() / (sigma**2).sum()
    assert kept[A] == pytest.approx(expected, rel=1e-5) and kept[A] < 0.99
    # Eckart-Young: the error is exactly the dropped singular values
    err = np.linalg.norm(avg[B] @ avg[A] - true)
    assert err == pytest.approx(np.sqrt((sigma[2:] ** 2).sum()), rel=1e-4)
    np.testing.assert_allclose(avg[HEAD], weighted_average(states, weights)[HEAD], atol=1e-6)


def test_bad_weights_refused():
    with pytest.raises(ValueError, match="positive"):
        weighted_average([{"w": np.zeros(1)}], [0])
