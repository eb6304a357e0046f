"""Export, parity gate and bundle of tiny models, through real onnxruntime sessions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def test_classifier_bundle_has_manifest_with_every_figure(classifier_bundle, tiny_classifier):
    manifest = json.loads((classifier_bundle / "manifest.json").read_text())
    assert manifest["format"] == "tunewright-bundle" and manifest["format_version"] == 1
    assert manifest["base_model"] == "tiny-bert" and manifest["task"] == "classification"
    # int8 names a bit width; for an encoder it is per-channel dynamic int8, its attention fused
    assert (manifest["quantization"]["name"], manifest["quantization"]["requested"]) == (
        "int8-dynamic",
        "int8",
    )
    assert manifest["quantization"]["fused"]["Attention"] == 2
    assert manifest["exporter"]["name"] == "optimum"
    assert [i["name"] for i in manifest["model"]["inputs"]][:2] == ["input_ids", "attention_mask"]
    assert manifest["model"]["outputs"][0]["name"] == "logits"
    assert manifest["labels"] == ["neg", "pos"]
    parity = manifest["parity"]
    assert parity["passed"] and parity["metric"] == "accuracy"
    assert {"max_abs_diff", "mean_abs_diff", "top1_agreement"} <= set(parity["bundle_vs_tuned"])
    bench = manifest["benchmark"]
    # the bundle and the tuned model were timed on the same inputs, and the ratios are theirs
    assert (
        bench["tokens"] == bench["torch_fp32"]["tokens"] == 16
        and bench["batch"] == bench["torch_fp32"]["batch"] == 1
    )
    assert bench["min_ms"] <= bench["p50_ms"] <= bench["p95_ms"]
    assert bench["versus_torch"]["speed"] == pytest.approx(
        bench["torch_fp32"]["p50_ms"] / bench["p50_ms"]
    )
    model, _ = tiny_classifier
    assert bench["torch_fp32"]["size_mb"] * 2**20 == sum(p.numel() * 4 for p in model.parameters())
    assert bench["versus_torch"]["size"] == pytest.approx(
        bench["size_mb"] / bench["torch_fp32"]["size_mb"]
    )
    on_disk = {p.name for p in classifier_bundle.iterdir()} - {"manifest.json"}
    assert on_disk == set(manifest["files"]) == {"model.onnx", "tokenizer.json", "parity.npz"}


def test_runtime_predicts_what_the_tuned_model_predicts(
    classifier_bundle, tiny_classifier, classification_examples
):
    import torch

    from tunewright.edge.runtime import load_bundle

    model, tokenizer = tiny_classifier
    bundle = load_bundle(classifier_bundle)
    texts = [e["text"] for e in classification_examples]
    predicted = [p["index"] for p in bundle.predict(texts)]
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    agree = np.mean(np.asarray(predicted) == logits.argmax(-1).numpy())
    assert agree >= 0.9
    # the bundle's tokenizer gives the tuned tokenizer's ids
    assert bundle.codec.encode(texts[0]) == tokenizer(texts[0])["input_ids"]


def test_verify_reruns_recorded_examples(classifier_bundle):
    from tunewright.edge.runtime import verify_bundle

    report = verify_bundle(classifier_bundle)
    assert report["ok"], report
    assert report["rerun"]["top1_agreement"] == pytest.approx(
        report["recorded"]["top1_agreement"], abs=0.05
    )


def test_runtime_imports_neither_torch_nor_transformers():
    code = (
        "import sys, tunewright.edge.runtime, tunewright.edge.runtime.__main__; "
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_generator_bundle_generates_what_torch_generates(generator_bundle, tiny_causal_lm):
    import torch

    from tunewright.edge.runtime import Generator, load_bundle

    model, tokenizer = tiny_causal_lm
    bundle = load_bundle(generator_bundle)
    assert isinstance(bundle, Generator)
    messages = [{"role": "user", "content": "What is 3 plus 3?"}]
    ids = bundle.prompt_ids(messages)
    assert ids == list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    )
    ours = list(bundle.generate_ids(ids, max_new_tokens=10, stop_at_eos=False))
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=10, min_new_tokens=10, do_sample=False
        )
    theirs = out[0, len(ids) :].tolist()
    # int8-block weights: greedy paths may part on a near-tie, but not at once
    assert ours[:3] == theirs[:3]
    manifest = bundle.manifest
    assert manifest["parity"]["bundle_vs_tuned"]["top1_agreement"] >= 0.9
    assert manifest["parity"]["bundle_vs_tuned"]["kl_per_token"] < 0.05
    assert (
        manifest["preprocessing"]["chat_format"]["generation_prompt"] == "<|im_start|>assistant\n"
    )
    assert {i["name"] for i in manifest["model"]["inputs"]} >= {
        "input_ids",
        "past_key_values.0.key",
    }


def test_generator_verify_and_sampling(generator_bundle):
    from tunewright.edge.runtime import load_bundle, verify_bundle

    assert verify_bundle(generator_bundle)["ok"]
    bundle = load_bundle(generator_bundle)
    a = bundle.generate("Hello", max_new_tokens=6, temperature=0.8, top_k=20, seed=1)
    b = bundle.generate("Hello", max_new_tokens=6, temperature=0.8, top_k=20, seed=1)
    assert a == b


def test_genai_exporter_bundle_runs_through_onnxruntime_genai(
    tmp_path, tiny_causal_lm, chat_examples, edge_pm, capfd
):
    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import GenAIGenerator, load_bundle

    model, tokenizer = tiny_causal_lm
    capfd.readouterr()
    lines: list[str] = []
    # int8 on a chat model: the bit width picks block-wise 8-bit weights for a decoder
    result = export_bundle(
        model,
        tokenizer,
        "chat",
        chat_examples[:4],
        tmp_path / "genai",
        quantize="int8",
        pm=edge_pm,
        fidelity_examples=2,
        new_tokens=8,
        bench=False,
        log=lines.append,
    )
    # the export shows its own progress and nothing of the tools it runs: the genai builder's
    # "Reading layer N" lines and progress bars (file descriptors included) stay off the console
    printed = capfd.readouterr()
    assert printed.out == "" and "Reading" not in printed.err and "\r" not in printed.err, printed
    steps = [
        line.split(":")[0] for line in lines if not line.startswith("WARNING")
    ]  # 4 examples: too few
    assert steps[:3] == ["reference", "export", "quantize"]
    assert result.manifest["runtime"] == "onnxruntime-genai"
    quantization = result.manifest["quantization"]
    assert (quantization["name"], quantization["requested"], quantization["bits"]) == (
        "int8-block",
        "int8",
        8,
    )
    assert quantization["embedding_tables"][0]["tied_head"] == ["/lm_head/MatMul"]
    assert (
        result.manifest["exporter"]["name"] == "genai"
    )  # auto prefers the model builder for decoders
    assert "genai_config.json" in result.manifest["files"]
    bundle = load_bundle(tmp_path / "genai")
    assert isinstance(bundle, GenAIGenerator)
    ids = bundle.prompt_ids([{"role": "user", "content": "hi"}])
    through_genai = list(bundle.generate_ids(ids, max_new_tokens=6, stop_at_eos=False))
    through_numpy = list(
        bundle.numpy_generator.generate_ids(ids, max_new_tokens=6, stop_at_eos=False)
    )
    assert through_genai[:3] == through_numpy[:3]
    # onnxruntime-genai would run on one thread: the bundle asks for one per physical core
    import os

    from tunewright.edge.runtime.predictors import physical_cores

    assert bundle.threads == physical_cores() and 1 <= physical_cores() <= os.cpu_count()
    # one intra-op thread (the genai config overlaid): the same greedy tokens
    one_thread = load_bundle(tmp_path / "genai", threads=1)
    assert list(one_thread.generate_ids(ids, max_new_tokens=6, stop_at_eos=False)) == through_genai


def test_quantize_auto_keeps_the_fastest_passing_candidate(
    tmp_path, tiny_classifier, classification_examples, edge_pm, monkeypatch
):
    from tunewright.edge import export_bundle

    model, tokenizer = tiny_classifier
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = export_bundle(
        model,
        tokenizer,
        "classification",
        classification_examples,
        "auto",
        quantize="auto",
        labels=["neg", "pos"],
        pm=edge_pm,
        bench=False,
        log=lambda m: None,
    )
    # onnxruntime's shape inference writes temporary models to the current directory: not here
    assert sorted(p.name for p in cwd.iterdir()) == ["auto"]
    tried = {c["quantizer"]: c for c in result.candidates}
    assert {"none", "int8-dynamic", "int8-static", "int8-block", "int4-block"} == set(tried)
    passing = [c for c in result.candidates if c["passed"]]
    fastest = min(passing, key=lambda c: c["latency_ms"])
    assert result.manifest["quantization"]["name"] == fastest["quantizer"]
    assert result.manifest["quantization"]["chosen_by"] == "auto"


#: how far a bundle's probabilities may be from the tuned model's, per scheme (tiny random BERT)
TOLERANCE = {"none": 1e-5, "fp16": 1e-2, "int8-static": 0.05, "int4-block": 0.05}
#: what each quantizer's bundle is asked, beside the tuned model
PROBE = ["good film", "awful plot and slow actors", "great fun"]


@pytest.fixture(scope="module")
def tuned_probabilities(tiny_classifier) -> np.ndarray:
    """The tuned model's answer to :data:`PROBE`, computed once for every scheme's test."""
    model, tokenizer = tiny_classifier
    return torch_probabilities(model, tokenizer, PROBE)


def torch_probabilities(model, tokenizer, texts) -> np.ndarray:
    """(N, 2) softmax of the tuned PyTorch model, each text alone as the bundle runs it."""
    import torch

    rows = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt")
            inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            rows.append(torch.softmax(model(**inputs).logits[0], -1).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("name", ["none", "fp16", "int8-static", "int4-block"])
def test_each_quantizer_passes_on_a_tiny_classifier(
    name, tmp_path, tiny_classifier, classification_examples, edge_pm, tuned_probabilities
):
    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import load_bundle

    model, tokenizer = tiny_classifier
    result = export_bundle(
        model,
        tokenizer,
        "classification",
        classification_examples,
        tmp_path / name,
        quantize=name,
        labels=["neg", "pos"],
        pm=edge_pm,
        bench=False,
        log=lambda m: None,
    )
    assert result.manifest["quantization"]["name"] == name
    assert result.parity.passed
    # what a user gets from predict() is the tuned model's answer, within the scheme's rounding
    scores = [
        [row["scores"][label] for label in ("neg", "pos")]
        for row in load_bundle(tmp_path / name).predict(PROBE)
    ]
    assert np.abs(np.asarray(scores) - tuned_probabilities).max() < TOLERANCE[name]


def test_torch_exporter_takes_models_optimum_does_not_know(
    tmp_path, classification_examples, tiny_classifier, edge_pm
):
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import load_bundle

    class BagOfWords(torch.nn.Module):
        def __init__(self, vocab: int):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(vocab, 16)
            self.head = torch.nn.Linear(16, 2)

        def forward(self, input_ids, attention_mask):
            # a model a task can evaluate answers `.logits`, as transformers' models do
            return SequenceClassifierOutput(
                logits=self.head(self.embed(input_ids, per_sample_weights=None))
            )

    _, tokenizer = tiny_classifier
    torch.manual_seed(0)
    model = BagOfWords(len(tokenizer)).eval()
    result = export_bundle(
        model,
        tokenizer,
        "classification",
        classification_examples,
        tmp_path / "bow",
        quantize="none",
        labels=["neg", "pos"],
        pm=edge_pm,
        bench=False,
        log=lambda m: None,
    )
    assert result.manifest["exporter"]["name"] == "torch"
    assert result.parity.figures["max_abs_diff"] < 1e-4
    scores = load_bundle(tmp_path / "bow").predict(["fun plot"])[0]["scores"]
    np.testing.assert_allclose(
        [scores["neg"], scores["pos"]],
        torch_probabilities(model, tokenizer, ["fun plot"])[0],
        atol=1e-5,
    )


class ImageTask:
    """The least an image classification task needs for export: pixel values in, accuracy out.
    (The real task is ``tunewright.vision``'s; this one keeps the edge tests independent of it.)"""

    model_kind = "image_classification"
    primary_metric = "accuracy"
    metric_directions = {"loss": "min", "accuracy": "max"}

    def tokenize(self, example, processor, labels=None):
        pixels = processor(images=example["image"].convert("RGB"), return_tensors="np")[
            "pixel_values"
        ][0]
        return {"pixel_values": pixels, "labels": labels.index(example["label"])}

    def collate(self, features, processor):
        import torch

        return {
            "pixel_values": torch.from_numpy(
                np.stack([f["pixel_values"] for f in features])
            ),  # (B, C, H, W)
            "labels": torch.tensor([f["labels"] for f in features]),
        }  # (B,)

    def metrics(self, model, batches):
        import torch

        losses, hits = [], []
        with torch.no_grad():
            for batch in batches:
                logits = model(pixel_values=batch["pixel_values"]).logits
                losses.append(
                    torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
                )
                hits.append(logits.argmax(-1) == batch["labels"])
        return {
            "loss": torch.cat(losses).mean().item(),
            "accuracy": torch.cat(hits).float().mean().item(),
        }


def test_image_classifier_bundle(tmp_path, edge_pm):
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import ImageClassifier, load_bundle

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "owl"},
        label2id={"cat": 0, "dog": 1, "owl": 2},
    )
    model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray((rng.random((40 + i, 48, 3)) * 255).astype(np.uint8)) for i in range(12)
    ]
    examples = [
        {"image": image, "label": ["cat", "dog", "owl"][i % 3]} for i, image in enumerate(images)
    ]
    result = export_bundle(
        model,
        processor,
        ImageTask(),
        examples,
        tmp_path / "vit",
        quantize="int8",
        labels=["cat", "dog", "owl"],
        pm=edge_pm,
        bench=False,
        log=lambda m: None,
    )
    assert result.manifest["exporter"]["name"] == "optimum"
    assert result.manifest["preprocessing"]["size"] == {"height": 32, "width": 32}
    bundle = load_bundle(tmp_path / "vit")
    assert isinstance(bundle, ImageClassifier)
    ours = bundle.pixel_values(images[:2])
    theirs = processor(images=images[:2], return_tensors="np")["pixel_values"]
    assert np.abs(ours - theirs).max() < 1e-5
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(theirs)).logits.argmax(-1).tolist()
    assert [p["label"] for p in bundle.predict(images[:2])] == [
        ["cat", "dog", "owl"][i] for i in expected
    ]
    # verify's recorded inputs stay a small share of a small model (one example at least)
    from tunewright.edge.parity import VERIFY_SHARE
    from tunewright.edge.runtime import verify_bundle

    with np.load(tmp_path / "vit" / "parity.npz") as data:
        kept, feed_bytes = (
            int(data["count"]),
            sum(data[k].nbytes for k in data.files if ".feed." in k),
        )
    model_bytes = (tmp_path / "vit" / "model.onnx").stat().st_size
    assert kept >= 1 and (kept == 1 or feed_bytes <= VERIFY_SHARE * model_bytes)
    assert kept < len(examples) and verify_bundle(tmp_path / "vit")["ok"]


def test_ort_format_is_written_hashed_and_loadable(
    tmp_path, tiny_classifier, classification_examples, edge_pm
):
    import onnxruntime as ort

    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import verify_bundle

    model, tokenizer = tiny_classifier
    result = export_bundle(
        model,
        tokenizer,
        "classification",
        classification_examples,
        tmp_path / "b",
        quantize="int8",
        labels=["neg", "pos"],
        pm=edge_pm,
        bench=False,
        ort_format=True,
        log=lambda m: None,
    )
    ort_file = result.manifest["model"]["ort_file"]
    assert ort_file == "model.ort" and ort_file in result.manifest["files"]
    assert verify_bundle(tmp_path / "b")["ok"]
    # the ORT-format file is the same model: same logits on the recorded inputs
    onnx_session = ort.InferenceSession(
        str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    ort_session = ort.InferenceSession(
        str(tmp_path / "b" / ort_file), providers=["CPUExecutionProvider"]
    )
    ids = np.asarray([tokenizer("good film")["input_ids"]])
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    feeds = {i.name: feeds[i.name] for i in onnx_session.get_inputs()}
    np.testing.assert_allclose(
        ort_session.run(["logits"], feeds)[0], onnx_session.run(["logits"], feeds)[0], atol=1e-5
    )
