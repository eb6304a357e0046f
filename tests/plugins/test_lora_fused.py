"""plugins/methods/lora_fused.py: LoRA's linear layers as one autograd node, PEFT's forward elsewhere."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tunewright import get_plugin_manager
from tunewright.plugins.methods.lora_fused import fuse_lora_layers
from tunewright.precision import cast_frozen

pytestmark = pytest.mark.usefixtures("one_thread")

LORA = get_plugin_manager().registries.methods["lora"]


def lora_model(tiny_llama_dir, **settings):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = LORA.apply(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LORA.config_class(**settings),
        "causal_lm",
    )
    with torch.no_grad():  # B starts at zero, which would hide any error in the update's path
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def peft_forward(model):
    """The same model with PEFT's own forward in every LoRA layer."""
    for module in model.modules():
        if "forward" in vars(module) and hasattr(module, "lora_A"):
            del module.forward
    return model


def lora_layers(model):
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


def loss_and_grads(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    embeddings = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    loss = model(
        inputs_embeds=embeddings, attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, embeddings.grad


@pytest.fixture
def batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (3, 11))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_every_lora_layer_is_fused_and_computes_what_peft_computes(tiny_llama_dir, batch):
    fused = lora_model(tiny_llama_dir)
    reference = peft_forward(lora_model(tiny_llama_dir))
    layers = lora_layers(fused)
    assert layers and all("forward" in vars(layer) for layer in layers)
    x = torch.randn(3, 11, layers[0].in_features)
    assert type(layers[0](x).grad_fn).__name__ == "_LoraLinearBackward"
    ours, theirs = loss_and_grads(fused, batch), loss_and_grads(reference, batch)
    assert ours[0].item() == pytest.approx(theirs[0].item(), rel=1e-6)
    assert set(ours[1]) == set(theirs[1]) and any("lora_A" in n for n in ours[1])
    for name, grad in theirs[1].items():  # A and B of every layer
        torch.testing.assert_close(ours[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(
        ours[2], theirs[2], rtol=1e-4, atol=1e-6
    )  # the gradient of the input


def test_in_bf16_the_fused_layers_follow_the_fp32_gradient(tiny_llama_dir, batch):
    reference = lora_model(tiny_llama_dir)
    fused = lora_model(tiny_llama_dir)
    cast_frozen(fused, torch.bfloat16)
    x = torch.randn(3, 11, lora_layers(fused)[0].in_features, dtype=torch.bfloat16)
    assert type(lora_layers(fused)[0](x).grad_fn).__name__ == "_LoraLinearBackward"
    ours, theirs = loss_and_grads(fused, batch)[1], loss_and_grads(reference, batch)[1]
    for name, grad in theirs.items():
        assert ours[name].dtype == torch.float32, name  # the adapter's own dtype
        cosine = torch.nn.functional.cosine_similarity(ours[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, f"{name}: cosine {cosine:.4f}"


def test_a_frozen_factor_gets_no_gradient(tiny_llama_dir, batch):
    """FFA-LoRA (federated ``ffa``) freezes A: only B trains."""
    model = lora_model(tiny_llama_dir)
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)
    grads = loss_and_grads(model, batch)[1]
    assert grads and all("lora_B" in name for name in grads)


def fallback_cases():
    def dropout(tiny_llama_dir):
        return lora_model(tiny_llama_dir, dropout=0.1), None

    def disabled(tiny_llama_dir):
        model = lora_model(tiny_llama_dir)
        return model, model.disable_adapter

    def merged(tiny_llama_dir):
        model = lora_model(tiny_llama_dir)
        model.merge_adapter()
        return model, None

    return {"dropout": dropout, "disabled": disabled, "merged": merged}


@pytest.mark.parametrize("case", sorted(fallback_cases()))
def test_peft_forward_is_kept_where_the_fused_step_does_not_apply(case, tiny_llama_dir):
    model, context = fallback_cases()[case](tiny_llama_dir)
    reference, reference_context = fallback_cases()[case](tiny_llama_dir)
    peft_forward(reference)
    layer, reference_layer = lora_layers(model)[0].train(), lora_layers(reference)[0].train()
    x = torch.randn(3, 11, layer.in_features, requires_grad=True)
    with contextlib.ExitStack() as stack:
        for enter in (context, reference_context):
            if enter is not None:
                stack.enter_context(enter())
        torch.manual_seed(2)  # the same dropout masks
        out = layer(x)
        torch.manual_seed(2)
        expected = reference_layer(x)
    assert type(out.grad_fn).__name__ != "_LoraLinearBackward"
    torch.testing.assert_close(out, expected)


def test_dora_keeps_peft_forward_and_fusing_twice_changes_nothing(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    dora = get_plugin_manager().registries.methods["dora"]
    model = dora.apply(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), dora.config_class(), "causal_lm"
    )
    assert not any("forward" in vars(layer) for layer in lora_layers(model))
    lora = lora_model(tiny_llama_dir)
    assert fuse_lora_layers(lora) == len(lora_layers(lora))


def test_the_fused_layers_keep_no_more_for_backward_than_peft(tiny_llama_dir, batch, saved_bytes):
    fused = lora_model(tiny_llama_dir)
    reference = peft_forward(lora_model(tiny_llama_dir))
    for model in (fused, reference):
        cast_frozen(model, torch.bfloat16)
        model.train()
    assert saved_bytes(fused, batch) <= saved_bytes(reference, batch)
