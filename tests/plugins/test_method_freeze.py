"""The ``freeze`` method: which parameters train, gradual unfreezing, and what a trainer calls."""

from __future__ import annotations

import pytest
import torch

from tunewright import ConfigError, get_plugin_manager

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

FREEZE = get_plugin_manager().registries.methods["freeze"]
Settings = FREEZE.config_class


def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def bert(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)


def trainable(model):
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def under(model, *prefixes):
    return {
        n
        for n, _ in model.named_parameters(remove_duplicate=False)
        if any(n.startswith(p + ".") for p in prefixes)
    }


def test_freeze_trains_the_top_layers_and_the_classifier(tiny_bert_dir):
    model = FREEZE.apply(
        bert(tiny_bert_dir), Settings(train_top_layers=1), "sequence_classification"
    )
    assert trainable(model) == under(model, "bert.encoder.layer.1", "bert.pooler", "classifier")

    # one step changes exactly those
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(FREEZE.optimizer_parameters(model), lr=0.1)
    inputs = torch.randint(1000, 2000, (3, 6), generator=torch.Generator().manual_seed(0))
    model(input_ids=inputs, labels=torch.tensor([0, 1, 2])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable(model)


def test_freeze_on_a_tied_causal_lm_leaves_the_embeddings_alone(tiny_llama_dir):
    model = FREEZE.apply(llama(tiny_llama_dir), Settings(train_top_layers=1), "causal_lm")
    assert trainable(model) == under(model, "model.layers.1", "model.norm")
    assert not model.lm_head.weight.requires_grad  # tied: it is the input embedding table

    model = FREEZE.apply(
        llama(tiny_llama_dir), Settings(train_top_layers=0, train_head=True), "causal_lm"
    )
    assert model.lm_head.weight.requires_grad and model.model.embed_tokens.weight.requires_grad
    assert set(FREEZE.trainable_state(model)) == {"model.norm.weight", "lm_head.weight"}


def test_gradual_unfreezing_adds_one_block_per_epoch(tiny_bert_dir):
    settings = Settings(train_top_layers=2, gradual_unfreeze=True)
    model = FREEZE.apply(bert(tiny_bert_dir), settings, "sequence_classification")
    head = under(model, "bert.pooler", "classifier")
    top, second = under(model, "bert.encoder.layer.1"), under(model, "bert.encoder.layer.0")
    everything = set(FREEZE.trainable_state(model))
    assert everything == head | top | second
    # after apply, all that ever trains is trainable: an optimizer built now holds it all
    assert trainable(model) == everything
    expected = {0: head, 1: head | top, 2: head | top | second, 5: head | top | second}
    for epoch in (0, 1, 2, 5, 0, 1):  # any order: the state follows the epoch number alone
        FREEZE.on_epoch(model, epoch)
        assert trainable(model) == expected[epoch]
        # what the optimizer holds and what a federated round sends never change
        assert {id(p) for p in FREEZE.optimizer_parameters(model)} == {
            id(p) for n, p in model.named_parameters() if n in everything
        }
        assert set(FREEZE.trainable_state(model)) == everything


def test_gradual_unfreezing_with_an_optimizer_built_after_apply(tiny_bert_dir):
    """What transformers' Trainer does: optimizer from requires_grad, then on_epoch per epoch."""
    model = FREEZE.apply(
        bert(tiny_bert_dir),
        Settings(train_top_layers=1, gradual_unfreeze=True),
        "sequence_classification",
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.1
    )
    inputs = torch.randint(1000, 2000, (3, 6), generator=torch.Generator().manual_seed(0))
    block = model.bert.encoder.layer[1].output.dense.weight
    for epoch, block_trains in ((0, False), (1, True)):
        FREEZE.on_epoch(model, epoch)
        before = block.detach().clone()
        model(input_ids=inputs, labels=torch.tensor([0, 1, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert torch.equal(block, before) != block_trains


def test_on_epoch_without_gradual_unfreezing_changes_nothing(tiny_bert_dir):
    model = FREEZE.apply(
        bert(tiny_bert_dir), Settings(train_top_layers=1), "sequence_classification"
    )
    before = trainable(model)
    FREEZE.on_epoch(model, 0)
    assert trainable(model) == before


def test_freeze_rejects_more_layers_than_the_model_has(tiny_llama_dir):
    with pytest.raises(
        ConfigError, match=r"freeze.train_top_layers: 3, but the model has 2 blocks"
    ):
        FREEZE.apply(llama(tiny_llama_dir), Settings(train_top_layers=3), "causal_lm")


def test_freeze_load_restores_the_trained_top(tiny_bert_dir, tmp_path):
    model = FREEZE.apply(
        bert(tiny_bert_dir), Settings(train_top_layers=1), "sequence_classification"
    )
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight.add_(0.1)
    FREEZE.save(model, tmp_path / "freeze")
    loaded = FREEZE.load(bert(tiny_bert_dir), tmp_path / "freeze", None, "sequence_classification")
    assert torch.equal(
        loaded.bert.encoder.layer[1].output.dense.weight,
        model.bert.encoder.layer[1].output.dense.weight,
    )
    assert trainable(loaded) == trainable(model)  # saved settings (1 layer), not the default (2)
