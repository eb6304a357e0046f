"""engine/precision.py: bf16 frozen weights beside fp32 trainable ones, for every method."""

from __future__ import annotations

import pytest
import torch

from tunewright import get_plugin_manager
from tunewright.precision import cast_frozen

METHODS = get_plugin_manager().registries.methods
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "I loved this film, truly."]


pytestmark = pytest.mark.usefixtures("one_thread")


def batch_for(kind, model_dir):
    from transformers import AutoTokenizer

    batch = dict(AutoTokenizer.from_pretrained(model_dir)(TEXTS, padding=True, return_tensors="pt"))
    if kind == "causal_lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
    else:
        batch["labels"] = torch.tensor([0, 1, 2])
    return batch


def applied(name, kind, model_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = (AutoModelForCausalLM.from_pretrained(model_dir) if kind == "causal_lm"
            else AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3))
    method = METHODS[name]
    settings = method.config_class() if method.config_class is not None else None
    return method.apply(base, settings, kind)


@pytest.mark.parametrize("kind", ["causal_lm", "sequence_classification"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_with_a_bf16_frozen_base(name, kind, tiny_llama_dir, tiny_bert_dir):
    """Frozen weights bf16, trainable ones fp32 with fp32 gradients, and a loss near the fp32 one."""
    model_dir = tiny_llama_dir if kind == "causal_lm" else tiny_bert_dir
    batch = batch_for(kind, model_dir)
    reference = applied(name, kind, model_dir)
    model = applied(name, kind, model_dir)
    cast_frozen(model, torch.bfloat16)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    if name != "full":
        assert frozen and all(p.dtype == torch.bfloat16 for p in frozen if p.is_floating_point())
    reference.train()
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert loss.dtype == torch.float32 or loss.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(reference(**batch).loss.item(), rel=2e-2)
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads, f"{name}: no gradient reached a trainable parameter"
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_lora_keeps_no_fp32_copy_of_its_inputs(tiny_llama_dir, saved_bytes):
    """LoRA's A multiplies the bf16 input the frozen layer saved anyway: no fp32 copy is kept."""
    batch = batch_for("causal_lm", tiny_llama_dir)
    model = applied("lora", "causal_lm", tiny_llama_dir)
    cast_frozen(model, torch.bfloat16)
    ours = saved_bytes(model, batch)
    # the same model with PEFT's own forward casting every adapter input to fp32 (its default)
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = True
        if "forward" in vars(module):  # the bridged A and B, the fused LoRA layers
            del module.forward
    copied = saved_bytes(model, batch)
    adapted = [m for m in model.modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    tokens = batch["input_ids"].numel()
    copies = sum(tokens * m.in_features * 4 for m in adapted)  # one fp32 input per adapted layer
    assert adapted and copied - ours >= 0.9 * copies


def test_lora_in_bf16_follows_the_fp32_gradient(tiny_llama_dir):
    batch = batch_for("causal_lm", tiny_llama_dir)
    reference = applied("lora", "causal_lm", tiny_llama_dir)
    model = applied("lora", "causal_lm", tiny_llama_dir)
    cast_frozen(model, torch.bfloat16)
    for m in (reference, model):
        m(**batch).loss.backward()
    ours = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for name, grad in theirs.items():
        if grad.abs().sum() == 0:  # LoRA's A gets no gradient while B is zero
            continue
        cosine = torch.nn.functional.cosine_similarity(ours[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, f"{name}: cosine {cosine:.4f}"
