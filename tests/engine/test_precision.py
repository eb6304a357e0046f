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
        batch["labels"] = batch["input_ids"].masked_fill(
            batch["attention_mask"] == 0, -100
        )  # (B, T)
    else:
        batch["labels"] = torch.tensor([0, 1, 2])
    return batch


def applied(name, kind, model_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = (
        AutoModelForCausalLM.from_pretrained(model_dir)
        if kind == "causal_lm"
        else AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    )
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


# -- every precision the config accepts, for every task kind, through a whole job --------------


def _image_folder(folder, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
        path = folder / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return folder


def _regression_rows(n: int) -> list[dict]:
    words = ["awful", "bad", "plain", "good", "great"]
    return [
        {"text": f"the film was {words[i % 5]} number {i}", "label": (i % 5) / 4 + 0.125}
        for i in range(n)
    ]


def _job(task_kind, tmp_path, models, precision):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from samples import chat_rows, classification_rows, write_jsonl

    data = tmp_path / "data"
    if task_kind == "chat":
        model, task, train = (
            models["llama"],
            "chat",
            write_jsonl(data / "chat.jsonl", chat_rows(20)),
        )
    elif task_kind == "classification":
        model, task, train = (
            models["bert"],
            "classification",
            write_jsonl(data / "labels.jsonl", classification_rows(20)),
        )
    elif task_kind == "regression":
        model, task, train = (
            models["bert"],
            "classification",
            write_jsonl(data / "scores.jsonl", _regression_rows(20)),
        )
    elif task_kind == "image-classification":
        images, labels = models["digits"]
        # MobileNetV2, not ViT: ViT casts its pixels to its own dtype, a convolution does not
        model, task = models["mobilenet"], "image-classification"
        train = _image_folder(data / "digits", images[:20], [label % 2 for label in labels[:20]])
    else:
        from PIL import Image

        rows = []
        for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 5):
            path = data / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (24 + i, 30), rgb).save(path)
            rows.append(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": path.name}},
                                {"type": "text", "text": "What colour is this?"},
                            ],
                        },
                        {"role": "assistant", "content": name},
                    ]
                }
            )
        model, task, train = (
            models["image_text"],
            "image-to-text",
            write_jsonl(data / "colours.jsonl", rows),
        )
    return {
        "model": str(model),
        "task": task,
        "method": "lora",
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(train), "validation": 0.2, "max_length": 128},
        "training": {
            "max_steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "precision": precision,
        },
        "output": str(tmp_path / "run"),
        "seed": 7,
    }


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize(
    "task_kind", ["chat", "classification", "regression", "image-classification", "image-to-text"]
)
def test_every_precision_runs_every_task_kind(
    task_kind,
    precision,
    tmp_path,
    tiny_llama_dir,
    tiny_bert_dir,
    mobilenet_v2_dir,
    mnist_digits,
    tiny_image_text_dir,
):
    """Forced explicitly, so that a machine without bf16 instructions still covers the bf16 path:
    baseline evaluation, two steps and the final evaluation give finite figures."""
    import json
    import math

    from tunewright import load_config, run_job

    models = {
        "llama": tiny_llama_dir,
        "bert": tiny_bert_dir,
        "mobilenet": mobilenet_v2_dir,
        "digits": mnist_digits,
        "image_text": tiny_image_text_dir,
    }
    pm = get_plugin_manager()
    raw = _job(task_kind, tmp_path, models, precision)
    messages: list[str] = []
    run_job(load_config(raw, pm.registries), pm, echo=messages.append)
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    # the progress line counts what the task trains on: images, or tokens
    unit = "images/s" if task_kind == "image-classification" else "tok/s"
    assert any(m.startswith("step ") and unit in m for m in messages), messages
    assert results["train"]["precision"] in (
        ("bf16", "fp32") if precision == "auto" else (precision,)
    )
    for stage in ("baseline", "final"):
        assert all(math.isfinite(v) for v in results[stage].values()), (stage, results[stage])
