"""engine/attention.py: grouped attention computes eager attention's figures, and steps aside."""

from __future__ import annotations

import json

import pytest
import torch

from tunewright.attention import GROUPED, grouped_attention, prefer_cpu_attention, register

pytestmark = pytest.mark.usefixtures("one_thread")


def llama(tiny_llama_dir, attention="sdpa", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, attn_implementation=attention, dtype=dtype
    )


def padded_batch():
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def logits_and_grads(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {
        n: p.grad for n, p in model.named_parameters() if p.grad is not None
    }


def test_grouped_attention_gives_eager_attentions_figures_and_gradients(tiny_llama_dir):
    batch = padded_batch()
    eager, grouped = llama(tiny_llama_dir, "eager"), llama(tiny_llama_dir)
    assert prefer_cpu_attention(grouped, max_length=256) == GROUPED
    assert grouped.config._attn_implementation == GROUPED
    calls = []
    grouped.model.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
    (expected, expected_grads), (ours, grads) = (
        logits_and_grads(eager, batch),
        logits_and_grads(grouped, batch),
    )
    assert calls
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], expected[real], rtol=1e-5, atol=1e-5)
    assert set(grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_in_bf16_grouped_attention_stays_near_fp32():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 6, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.zeros(2, 1, 9, 9).masked_fill(
        torch.ones(9, 9, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min
    )
    module = torch.nn.Module()
    exact, exact_weights = grouped_attention(module, query, key, value, mask, scaling=0.25)
    # against repeat_kv + softmax, as transformers' eager computes it
    keys, values = key.repeat_interleave(3, dim=1), value.repeat_interleave(3, dim=1)
    weights = torch.softmax(query @ keys.transpose(-1, -2) * 0.25 + mask, dim=-1)
    torch.testing.assert_close(exact_weights, weights)
    torch.testing.assert_close(exact, (weights @ values).transpose(1, 2))
    low, low_weights = grouped_attention(
        module, *(t.bfloat16() for t in (query, key, value)), mask.bfloat16(), scaling=0.25
    )
    assert low.dtype == torch.bfloat16 and low_weights.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), exact, rtol=0.02, atol=0.02)


def test_an_argument_it_does_not_know_goes_to_the_models_own_eager_attention(
    tiny_llama_dir, monkeypatch
):
    from transformers.models.llama import modeling_llama

    seen = []
    eager = modeling_llama.eager_attention_forward

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs)
        return eager(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", recording)
    module = llama(tiny_llama_dir).model.layers[0].self_attn
    query, key, value = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    grouped_attention(
        module, query, key, value, None, scaling=0.25, position_ids=torch.arange(5)[None]
    )
    assert seen == []  # position_ids means nothing to eager attention either
    grouped_attention(module, query, key, value, None, scaling=0.25, softcap=30.0)
    assert seen and seen[0]["softcap"] == 30.0


def test_attention_is_kept_for_long_sequences_and_for_a_users_choice(tiny_llama_dir, tmp_path):
    assert prefer_cpu_attention(llama(tiny_llama_dir), max_length=1024) is None
    assert prefer_cpu_attention(llama(tiny_llama_dir, "eager"), max_length=256) is None
    model = llama(tiny_llama_dir)
    prefer_cpu_attention(model, max_length=256)
    model.save_pretrained(tmp_path / "saved")  # a saved model does not name it: it loads anywhere
    assert GROUPED not in (tmp_path / "saved" / "config.json").read_text()
    assert "attn" not in "".join(json.loads((tmp_path / "saved" / "config.json").read_text()))
    register()  # twice is harmless
    assert llama(tmp_path / "saved").config._attn_implementation == "sdpa"
