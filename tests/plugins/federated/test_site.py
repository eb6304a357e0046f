"""A site's own rules, without Flower: what it must agree on with the server, FedProx's proximal
term, and FFA-LoRA's shared A factors."""

import pytest
import torch

from tunewright import ConfigError, get_plugin_manager
from tunewright.config import load_config
from tunewright.plugins.federated.site import (
    check_fingerprint,
    fingerprint,
    freeze_lora_a,
    proximal_term,
)


def job(**changes):
    raw = {
        "model": "minilm-l6",
        "task": "classification",
        "method": "lora",
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": "train.jsonl"},
        "output": "runs/x",
        "runner": "federated",
        "federated": {"aggregation": "fedavg"},
    }
    for key, value in changes.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    return load_config(raw, get_plugin_manager().registries)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"model": "smollm2-135m-instruct"}, "model"),
        ({"method": "dora", "lora": None, "dora": {"r": 4, "alpha": 8}}, "method"),
        ({"lora": {"r": 8, "alpha": 8}}, "lora.r"),
    ],
)
def test_a_differing_config_is_refused_naming_the_key(changes, key):
    labels = ["negative", "positive"]
    server = fingerprint(job(), labels)
    site = fingerprint(job(**changes), labels)
    with pytest.raises(
        ConfigError, match=rf"site s1: its config differs from the server's at {key}: "
    ):
        check_fingerprint(site, server, "s1")
    check_fingerprint(server, fingerprint(job(), labels), "s1")  # the same config passes


def test_other_labels_are_refused():
    with pytest.raises(ConfigError, match="at labels: "):
        check_fingerprint(fingerprint(job(), ["a", "b"]), fingerprint(job(), ["a", "c"]), "s2")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Module()
        self.q.base = torch.nn.Linear(4, 5)
        self.q.lora_A = torch.nn.ModuleDict(
            {"default": torch.nn.Linear(4, 2, bias=False)}
        )  # (r, in)
        self.q.lora_B = torch.nn.ModuleDict(
            {"default": torch.nn.Linear(2, 5, bias=False)}
        )  # (out, r)
        self.q.base.requires_grad_(False)


def test_proximal_term_is_half_mu_times_the_squared_distance_with_its_gradient():
    torch.manual_seed(0)
    model = Tiny()
    assert proximal_term(model, 0.0) is None
    term = proximal_term(model, 0.5)
    assert float(term(model)) == 0.0  # anchored where the round started
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    value = term(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = 0.25 * sum(
        float(((dict(model.named_parameters())[n] - anchor[n]) ** 2).sum()) for n in trained
    )
    assert float(value) == pytest.approx(expected, rel=1e-5)
    value.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:  # d/dw mu/2 ||w - w0||^2 = mu (w - w0)
            torch.testing.assert_close(param.grad, 0.5 * (param.detach() - anchor[name]))
        else:  # the frozen base is not pulled anywhere
            assert param.grad is None


def test_ffa_draws_the_same_a_on_every_site_from_the_seed_and_freezes_it():
    torch.manual_seed(1)
    one = Tiny()
    torch.manual_seed(2)
    two = Tiny()
    assert freeze_lora_a(one, seed=7) == freeze_lora_a(two, seed=7) == 1
    a_one, a_two = one.q.lora_A["default"].weight, two.q.lora_A["default"].weight
    torch.testing.assert_close(a_one, a_two)
    assert not a_one.requires_grad and one.q.lora_B["default"].weight.requires_grad
    assert float(a_one.abs().max()) <= 1 / 4**0.5  # PEFT's Kaiming-uniform bound, 1/sqrt(in)
    three = Tiny()
    freeze_lora_a(three, seed=8)
    assert not torch.equal(three.q.lora_A["default"].weight, a_one)


def test_ffa_without_lora_factors_is_a_config_error():
    with pytest.raises(ConfigError, match="ffa freezes LoRA's A factors"):
        freeze_lora_a(torch.nn.Linear(3, 3), seed=1)
