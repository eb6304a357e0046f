"""Fixtures for the edge tests: tiny models with real tokenizers, held-out examples, exported bundles."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = ["good", "bad", "film", "plot", "great", "awful", "actors", "slow", "fun", "dull"]


@pytest.fixture(scope="session")
def classification_examples() -> list[dict]:
    rng = random.Random(0)
    return [
        {
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))),
            "label": rng.choice(["neg", "pos"]),
        }
        for _ in range(32)
    ]


@pytest.fixture(scope="session")
def chat_examples() -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
        }
        for i in range(10)
    ]


@pytest.fixture(scope="session")
def tiny_classifier(tiny_bert_dir):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)  # the new head: the same model whichever test asks first
    model = BertForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    return model, AutoTokenizer.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_causal_lm(tiny_llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(
        tiny_llama_dir
    )


@pytest.fixture(scope="session")
def edge_pm():
    from tunewright import get_plugin_manager

    return get_plugin_manager()


@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory, tiny_classifier, classification_examples, edge_pm) -> Path:
    """An int8 bundle of the tiny classifier, exported once per session (tests copy it to change it)."""
    from tunewright.edge import export_bundle

    model, tokenizer = tiny_classifier
    out = tmp_path_factory.mktemp("bundles") / "classifier"
    export_bundle(
        model,
        tokenizer,
        "classification",
        classification_examples,
        out,
        quantize="int8",
        labels=["neg", "pos"],
        info={"base_model": "tiny-bert", "method": "none", "task": "classification"},
        pm=edge_pm,
        log=lambda message: None,
    )
    return out


@pytest.fixture(scope="session")
def generator_bundle(tmp_path_factory, tiny_causal_lm, chat_examples, edge_pm) -> Path:
    from tunewright.edge import export_bundle

    model, tokenizer = tiny_causal_lm
    out = tmp_path_factory.mktemp("bundles") / "generator"
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
    return out


class _ImageTask:
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
        import numpy as np
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


@pytest.fixture(scope="session")
def image_classifier_bundle(tmp_path_factory, tiny_vit_dir, edge_pm) -> Path:
    """An int8 bundle of the tiny ViT (32 x 32 images, labels cat/dog/owl), exported once."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    from tunewright.edge import export_bundle

    torch.manual_seed(0)
    model = ViTForImageClassification.from_pretrained(tiny_vit_dir).eval()
    processor = ViTImageProcessor.from_pretrained(tiny_vit_dir)
    rng = np.random.default_rng(0)
    names = ["cat", "dog", "owl"]
    examples = [
        {
            "image": Image.fromarray((rng.random((40 + i, 48, 3)) * 255).astype(np.uint8)),
            "label": names[i % 3],
        }
        for i in range(12)
    ]
    out = tmp_path_factory.mktemp("bundles") / "image-classifier"
    export_bundle(
        model,
        processor,
        _ImageTask(),
        examples,
        out,
        quantize="int8",
        labels=names,
        pm=edge_pm,
        bench=False,
        log=lambda message: None,
    )
    return out


@pytest.fixture(scope="session")
def image_text_chat_bundle(tiny_image_text_dir, tmp_path_factory, edge_pm) -> Path:
    """An fp32 bundle of the tiny image+text model (every image one low-detail view), exported once
    for the tests that serve it."""
    from PIL import Image

    from tunewright.edge import export_bundle
    from tunewright.vision import VisionSettings, prepare_example

    job = VisionSettings(detail="low")
    task = edge_pm.registries.tasks["image-to-text"]
    processor = task.load_tokenizer(tiny_image_text_dir)
    model = task.load_model(tiny_image_text_dir, None, None, processor)
    root = tmp_path_factory.mktemp("image-text-chat")
    examples = []
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 190, 30)), ("blue", (30, 30, 220))):
        Image.new("RGB", (40, 40), rgb).save(root / f"{name}.png")
        question = [
            {"type": "image_url", "image_url": {"url": f"{name}.png"}},
            {"type": "text", "text": "What colour is this?"},
        ]
        raw = {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": name},
            ]
        }
        examples.append(prepare_example(raw, job, root=root))
    bundle = root / "bundle"
    export_bundle(
        model,
        processor,
        task,
        examples,
        bundle,
        quantize="none",
        bench=False,
        config=job,
        pm=edge_pm,
        log=lambda line: None,
    )
    return bundle
