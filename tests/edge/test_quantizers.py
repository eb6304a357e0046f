"""The built-in quantizers on real exports of tiny models: which scheme a bit width picks, and the
embedding table quantized once and shared with a tied LM head."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_classifier, tiny_causal_lm, edge_pm):
    """fp32 exports: an encoder (optimum), a decoder with its KV cache (optimum), the same decoder
    through onnxruntime-genai's builder, and a small convolutional net (torch.onnx)."""
    import torch

    root = tmp_path_factory.mktemp("exports")
    exporters = edge_pm.registries.exporters
    classifier, bert_tokenizer = tiny_classifier
    llama, llama_tokenizer = tiny_causal_lm

    class SmallCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, 3),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
                torch.nn.Linear(8, 3),
            )

        def forward(self, pixel_values):
            return self.net(pixel_values)

    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    return {
        "encoder": exporters["optimum"].export(
            classifier, bert_tokenizer, "sequence_classification", root / "enc"
        ),
        "decoder": exporters["optimum"].export(llama, llama_tokenizer, "causal_lm", root / "dec"),
        "genai": exporters["genai"].export(llama, llama_tokenizer, "causal_lm", root / "genai"),
        "cnn": exporters["torch"].export(cnn, processor, "image_classification", root / "cnn"),
    }


@pytest.mark.parametrize(
    "kind,bits,scheme",
    [
        ("encoder", 8, "int8-dynamic"),
        ("decoder", 8, "int8-block"),
        ("genai", 8, "int8-block"),
        ("cnn", 8, "int8-static"),
        ("encoder", 4, "int4-block"),
        ("genai", 4, "int4-block"),
    ],
)
def test_a_bit_width_picks_the_faithful_scheme(exports, edge_pm, kind, bits, scheme):
    quantizer = edge_pm.registries.quantizers[f"int{bits}"]
    assert quantizer.scheme_for(exports[kind]) is edge_pm.registries.quantizers[scheme]


def _run_logits(path, ids):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for meta in session.get_inputs():
        if meta.name.startswith("past_key_values"):
            feeds[meta.name] = np.zeros((1, meta.shape[1], 0, meta.shape[3]), np.float32)
        elif meta.name == "position_ids":
            feeds[meta.name] = np.arange(ids.shape[1])[None]
    return session.run(["logits"], feeds)[0]


@pytest.mark.parametrize("kind", ["decoder", "genai"])
def test_the_tied_embedding_table_is_quantized_once_and_shared(exports, edge_pm, tmp_path, kind):
    import onnx
    from onnx import numpy_helper

    exported = exports[kind]
    vocab = 49152
    quantized = edge_pm.registries.quantizers["int8-block"].quantize(exported, tmp_path / "q", [])
    model = onnx.load(str(quantized.path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    tables = [
        name for name, value in inits.items() if value.shape[:1] == (vocab,) and value.ndim >= 2
    ]
    assert (
        len(tables) == 2
    )  # the quantized bytes (vocab, blocks, 64) and their scales (vocab, blocks)
    data = next(name for name in tables if inits[name].dtype == np.uint8)
    readers = {node.op_type for node in model.graph.node if data in node.input}
    assert readers == {
        "MatMulNBits",
        "Reshape",
    }  # the head reads the bytes, the gather their reshape
    assert any(node.op_type == "GatherBlockQuantized" for node in model.graph.node)
    assert not [
        n for n, v in inits.items() if v.dtype == np.float32 and v.size >= vocab * 64
    ]  # no float table left
    record = quantized.quantization["embedding_tables"][0]
    assert record["shape"] == [vocab, 64] and record["tied_head"]
    # the quantized model computes what the fp32 one does, the embedding lookup included
    ids = np.asarray([[1, 9906, 2114, 28, 11, 1380, 3010, 2]])
    ours, reference = _run_logits(quantized.path, ids), _run_logits(exported.path, ids)
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= 0.85
    assert np.abs(ours - reference).max() < 0.05 * np.abs(reference).max()


def test_int8_static_compacts_the_qdq_graph_names_and_computes_the_same(exports, edge_pm, tmp_path):
    import shutil

    import onnx
    import onnxruntime as ort

    from tunewright.plugins.edge.quantizers import compact_names

    cnn = exports["cnn"]
    pixels = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    copy = tmp_path / "copy.onnx"
    shutil.copy(cnn.path, copy)
    saved = compact_names(copy)
    before, after = onnx.load(str(cnn.path)).graph, onnx.load(str(copy)).graph
    assert saved == cnn.path.stat().st_size - copy.stat().st_size > 0
    assert [n.name for n in after.node] == [f"n{i}" for i in range(len(before.node))]
    assert [v.name for v in after.input] == ["pixel_values"] and [v.name for v in after.output] == [
        "logits"
    ]
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": pixels}
    )[0]
    np.testing.assert_array_equal(run(copy), run(cnn.path))
    calibration = [
        {
            "pixel_values": np.random.default_rng(i)
            .standard_normal((1, 3, 16, 16))
            .astype(np.float32)
        }
        for i in range(8)
    ]
    quantized = edge_pm.registries.quantizers["int8-static"].quantize(
        cnn, tmp_path / "q", calibration
    )
    assert quantized.quantization["names_compacted_bytes"] > 0
    assert (
        quantized.quantization["calibration_method"] == "percentile 99.999"
    )  # one input shape: images
    assert np.abs(run(quantized.path) - run(cnn.path)).max() < 0.1 * np.abs(run(cnn.path)).max()


def test_weights_over_the_limit_go_beside_the_model_and_the_bundle_runs_the_same(
    tiny_causal_lm, chat_examples, edge_pm, generator_bundle, tmp_path, monkeypatch
):
    """A model over ``EXTERNAL_DATA_BYTES`` keeps its weights in ``model.onnx.data`` (memory-mapped
    by onnxruntime): the manifest lists and hashes it, the bundle verifies, and it generates what
    the one-file bundle of the same model generates. The tiny model is far under 16 MiB, so the
    limit is lowered."""
    from tunewright.edge import export_bundle, protocols
    from tunewright.edge.runtime import load_bundle, verify_bundle

    monkeypatch.setattr(protocols, "EXTERNAL_DATA_BYTES", 1024)
    model, tokenizer = tiny_causal_lm
    out = tmp_path / "bundle"
    export_bundle(
        model,
        tokenizer,
        "chat",
        chat_examples,
        out,
        exporter="optimum",
        quantize="int8-block",
        info={"base_model": "tiny-llama", "method": "none", "task": "chat"},
        pm=edge_pm,
        fidelity_examples=3,
        new_tokens=12,
        log=lambda message: None,
    )
    data = out / "model.onnx.data"
    assert data.is_file() and not (generator_bundle / "model.onnx.data").exists()
    assert data.stat().st_size > (out / "model.onnx").stat().st_size
    assert data.stat().st_mode & 0o777 == (out / "model.onnx").stat().st_mode & 0o777
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["model.onnx.data"]["bytes"] == data.stat().st_size
    assert verify_bundle(out)["ok"]
    prompt = [{"role": "user", "content": "hello there"}]
    split, whole = load_bundle(out), load_bundle(generator_bundle)
    assert split.generate(prompt, max_new_tokens=8, stop_at_eos=False) == whole.generate(
        prompt, max_new_tokens=8, stop_at_eos=False
    )
