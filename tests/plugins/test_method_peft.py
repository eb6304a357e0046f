"""The PEFT-backed methods: target modules, the classification head, folders, prompt tuning's merge."""

from __future__ import annotations

import json

import pytest
import torch

from tunewright import ConfigError, UsageError, get_plugin_manager

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = get_plugin_manager().registries.methods


def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def bert(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)


def adapted(model):
    """Qualified names of the modules PEFT wrapped with a tuner layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        n.replace("base_model.model.", "", 1)
        for n, m in model.named_modules()
        if isinstance(m, BaseTunerLayer)
    }


def test_lora_auto_targets_attention_and_mlp_of_llama(tiny_llama_dir):
    lora = METHODS["lora"]
    model = lora.apply(llama(tiny_llama_dir), None, "causal_lm")
    wanted = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    blocks = {"self_attn": wanted[:4], "mlp": wanted[4:]}
    assert adapted(model) == {
        f"model.layers.{i}.{part}.{name}"
        for i in range(2)
        for part, names in blocks.items()
        for name in names
    }
    assert sorted(model.peft_config["default"].target_modules) == sorted(wanted)
    assert not any("lm_head" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_auto_targets_bert_and_trains_its_classifier(tiny_bert_dir):
    lora = METHODS["lora"]
    model = lora.apply(bert(tiny_bert_dir), None, "sequence_classification")
    suffixes = {name.rsplit(".", 1)[-1] for name in adapted(model)}
    assert suffixes == {"query", "key", "value", "dense"}
    assert not any(name.startswith("classifier") for name in adapted(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n and "modules_to_save" in n for n in trainable)
    assert any("classifier" in key for key in lora.trainable_state(model))


def test_lora_explicit_targets(tiny_llama_dir):
    lora, Settings = METHODS["lora"], METHODS["lora"].config_class
    model = lora.apply(
        llama(tiny_llama_dir), Settings(target_modules=["q_proj", "v_proj"], r=2), "causal_lm"
    )
    assert {n.rsplit(".", 1)[-1] for n in adapted(model)} == {"q_proj", "v_proj"}
    assert model.peft_config["default"].r == 2


def test_lora_unknown_target_lists_what_exists(tiny_llama_dir):
    lora, Settings = METHODS["lora"], METHODS["lora"].config_class
    with pytest.raises(ConfigError, match=r"lora.target_modules: 'query' names no module .*q_proj"):
        lora.apply(llama(tiny_llama_dir), Settings(target_modules=["query"]), "causal_lm")


def test_ia3_auto_targets(tiny_llama_dir):
    model = METHODS["ia3"].apply(llama(tiny_llama_dir), None, "causal_lm")
    config = model.peft_config["default"]
    assert set(config.target_modules) == {"k_proj", "v_proj", "down_proj"}
    assert set(config.feedforward_modules) == {"down_proj"}


def test_dora_folder_says_dora_and_lora_will_not_load_it(tiny_llama_dir, tmp_path):
    dora, lora = METHODS["dora"], METHODS["lora"]
    model = dora.apply(llama(tiny_llama_dir), None, "causal_lm")
    dora.save(model, tmp_path / "dora")
    assert json.loads((tmp_path / "dora" / "adapter_config.json").read_text())["use_dora"] is True
    with pytest.raises(UsageError, match="holds a DoRA adapter, not one of method 'lora'"):
        lora.load(llama(tiny_llama_dir), tmp_path / "dora", None, "causal_lm")
    with pytest.raises(UsageError, match="not one of method 'ia3'"):
        METHODS["ia3"].load(llama(tiny_llama_dir), tmp_path / "dora", None, "causal_lm")
    with pytest.raises(UsageError, match="not a PEFT adapter folder"):
        lora.load(llama(tiny_llama_dir), tmp_path, None, "causal_lm")


def test_loaded_adapter_can_train_on(tiny_llama_dir, tmp_path):
    for name in ("lora", "prompt_tuning"):
        method = METHODS[name]
        method.save(method.apply(llama(tiny_llama_dir), None, "causal_lm"), tmp_path / name)
        loaded = method.load(llama(tiny_llama_dir), tmp_path / name, None, "causal_lm")
        assert {n for n, p in loaded.named_parameters() if p.requires_grad} != set()


def test_prompt_tuning_refuses_to_merge(tiny_bert_dir):
    method = METHODS["prompt_tuning"]
    model = method.apply(bert(tiny_bert_dir), None, "sequence_classification")
    with pytest.raises(UsageError, match="cannot be merged into a plain model"):
        method.merge(model)


def test_state_from_another_model_is_refused(tiny_llama_dir):
    lora, Settings = METHODS["lora"], METHODS["lora"].config_class
    small = lora.apply(llama(tiny_llama_dir), Settings(target_modules=["q_proj"]), "causal_lm")
    full = lora.apply(llama(tiny_llama_dir), None, "causal_lm")
    with pytest.raises(UsageError, match="does not fit this model"):
        lora.load_trainable_state(full, lora.trainable_state(small))


def test_unknown_task_kind(tiny_llama_dir):
    with pytest.raises(
        UsageError,
        match=r"cannot tune a model of task kind 'seq2seq' \(it supports: causal_lm, "
        r"sequence_classification, image_classification, image_text_to_text\)",
    ):
        METHODS["lora"].apply(llama(tiny_llama_dir), None, "seq2seq")


def test_prompt_tuning_logits_cover_the_input_positions_only(tiny_llama_dir, tmp_path):
    method = METHODS["prompt_tuning"]
    settings = method.config_class(num_virtual_tokens=5)
    model = method.apply(llama(tiny_llama_dir), settings, "causal_lm").eval()
    inputs = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
        assert logits.shape == (2, 7, model.config.vocab_size)
        # the same numbers PEFT computes for those positions, with the hook out of the way
        hooks = dict(model._forward_hooks)
        model._forward_hooks.clear()
        assert model(input_ids=inputs).logits.shape[1] == 5 + 7
        torch.testing.assert_close(model(input_ids=inputs).logits[:, 5:], logits, atol=0, rtol=0)
        model._forward_hooks.update(hooks)
    method.save(model, tmp_path / "prompt")
    loaded = method.load(llama(tiny_llama_dir), tmp_path / "prompt", None, "causal_lm").eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=inputs).logits, logits)


def test_heads_and_targets_are_found_beyond_llama_and_bert():
    """DistilBERT names everything differently and has a two-layer head."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=100, dim=16, hidden_dim=32, n_layers=2, n_heads=2, num_labels=3
    )
    model = METHODS["lora"].apply(
        DistilBertForSequenceClassification(config), None, "sequence_classification"
    )
    suffixes = {name.rsplit(".", 1)[-1] for name in adapted(model)}
    assert suffixes == {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for head in ("pre_classifier", "classifier"):
        assert any(n.startswith(f"base_model.model.{head}.modules_to_save.") for n in trainable), (
            head
        )
