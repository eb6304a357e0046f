"""The bottleneck ``adapter`` method: placement, identity at the start, what trains, its folder."""

from __future__ import annotations

import json

import pytest
import torch

from tunewright import ConfigError, UsageError, get_plugin_manager

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

ADAPTER = get_plugin_manager().registries.methods["adapter"]
Settings = ADAPTER.config_class


def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def bert(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).eval()


def ids(vocab, shape=(2, 7)):
    return torch.randint(5, vocab, shape, generator=torch.Generator().manual_seed(0))


def adapters(model):
    return {name: m for name, m in model.named_modules() if name.endswith(".bottleneck_adapter")}


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_adapter_starts_as_identity_and_its_hook_is_live(which, tiny_llama_dir, tiny_bert_dir):
    model = llama(tiny_llama_dir) if which == "llama" else bert(tiny_bert_dir)
    kind = "causal_lm" if which == "llama" else "sequence_classification"
    inputs = ids(model.config.vocab_size)
    with torch.no_grad():
        before = model(input_ids=inputs).logits
        model = ADAPTER.apply(model, Settings(), kind)
        assert torch.equal(model(input_ids=inputs).logits, before)  # up-projection starts at zero
        for adapter in adapters(model).values():
            adapter.up.bias.fill_(0.5)
        assert not torch.allclose(model(input_ids=inputs).logits, before)  # the hook runs


def test_adapter_placement_and_size(tiny_llama_dir, tiny_bert_dir):
    model = ADAPTER.apply(llama(tiny_llama_dir), Settings(layers=[-1], size=5), "causal_lm")
    assert list(adapters(model)) == ["model.layers.1.bottleneck_adapter"]
    assert adapters(model)["model.layers.1.bottleneck_adapter"].down.out_features == 5

    model = ADAPTER.apply(
        bert(tiny_bert_dir), Settings(reduction_factor=8), "sequence_classification"
    )
    assert list(adapters(model)) == [f"bert.encoder.layer.{i}.bottleneck_adapter" for i in (0, 1)]
    assert {a.down.out_features for a in adapters(model).values()} == {32 // 8}


def test_adapter_trains_adapters_and_the_classifier_only(tiny_llama_dir, tiny_bert_dir):
    model = ADAPTER.apply(llama(tiny_llama_dir), None, "causal_lm")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".bottleneck_adapter." in n for n in trainable)

    model = ADAPTER.apply(bert(tiny_bert_dir), None, "sequence_classification")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(".bottleneck_adapter." in n or n.startswith("classifier.") for n in trainable)
    assert set(ADAPTER.trainable_state(model)) == trainable


def test_adapter_layers_out_of_range(tiny_llama_dir):
    with pytest.raises(
        ConfigError, match=r"adapter.layers: 2 is not a block of this model; it has 2"
    ):
        ADAPTER.apply(llama(tiny_llama_dir), Settings(layers=[0, 2]), "causal_lm")


def test_adapter_applies_once(tiny_llama_dir):
    model = ADAPTER.apply(llama(tiny_llama_dir), None, "causal_lm")
    with pytest.raises(UsageError, match="adapters already"):
        ADAPTER.apply(model, None, "causal_lm")


def test_adapter_folder_is_not_mistaken_for_peft(tiny_bert_dir, tmp_path):
    model = ADAPTER.apply(
        bert(tiny_bert_dir), Settings(layers=[0], activation="tanh"), "sequence_classification"
    )
    ADAPTER.save(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "trainable_state.safetensors",
        "tunewright_method.json",
    ]
    record = json.loads((tmp_path / "adapter" / "tunewright_method.json").read_text())
    assert record["method"] == "adapter" and record["settings"]["activation"] == "tanh"

    # the saved settings win over the ones passed to load
    loaded = ADAPTER.load(
        bert(tiny_bert_dir), tmp_path / "adapter", Settings(), "sequence_classification"
    )
    assert list(adapters(loaded)) == ["bert.encoder.layer.0.bottleneck_adapter"]
    with pytest.raises(UsageError, match="task kind"):
        ADAPTER.load(bert(tiny_bert_dir), tmp_path / "adapter", None, "causal_lm")
    freeze = get_plugin_manager().registries.methods["freeze"]
    with pytest.raises(UsageError, match="saved by method 'adapter', not 'freeze'"):
        freeze.load(bert(tiny_bert_dir), tmp_path / "adapter", None, "sequence_classification")


def test_merged_adapter_model_keeps_adapters_and_trains_nothing(tiny_llama_dir):
    model = ADAPTER.apply(llama(tiny_llama_dir), None, "causal_lm")
    merged = ADAPTER.merge(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert len(adapters(merged)) == 2
    assert not any(p.requires_grad for p in merged.parameters())


# the legacy TorchScript exporter, as the built-in torch exporter uses; its warnings are not ours
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_merged_adapters_survive_onnx_export(tiny_bert_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = ADAPTER.apply(bert(tiny_bert_dir), None, "sequence_classification")
    with torch.no_grad():
        for adapter in adapters(model).values():
            adapter.up.weight.normal_(0, 0.5)
    merged = ADAPTER.merge(model).eval()
    assert merged.tunewright_method["weights_only"] is False
    inputs = ids(merged.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = merged(input_ids=inputs).logits

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = merged

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    with torch.inference_mode():
        torch.onnx.export(
            LogitsOnly().eval(),
            (inputs,),
            str(tmp_path / "model.onnx"),
            input_names=["input_ids"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (logits,) = session.run(None, {"input_ids": inputs.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        for adapter in adapters(merged).values():
            adapter.up.weight.zero_()
        base = merged(input_ids=inputs).logits
    assert not torch.allclose(base, expected, atol=1e-4)  # so the graph did hold the adapters
