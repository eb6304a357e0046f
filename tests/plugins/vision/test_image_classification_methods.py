"""lora, freeze and full on image classifiers: the packaged MobileNetV2 (a CNN with BatchNorm) and
a tiny ViT, through apply -> training steps on real digits -> save -> load -> merge."""

from __future__ import annotations

import pytest
import torch

from tunewright import UsageError, get_plugin_manager

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

PM = get_plugin_manager()
METHODS = PM.registries.methods
TASK = PM.registries.tasks["image-classification"]
KIND = "image_classification"
LABELS = ["0", "1", "2"]
STEPS = 15
# pretrained MobileNetV2 learns 12 digits at small rates; a random tiny ViT needs larger ones
LEARNING_RATES = {
    "mobilenet-v2": {"lora": 2e-3, "freeze": 1e-3, "full": 1e-3},
    "tiny-vit": {"lora": 3e-2, "freeze": 3e-2, "full": 1e-2},
}
LOSS_RATIO = {"mobilenet-v2": 0.5, "tiny-vit": 0.85}


@pytest.fixture(scope="module", params=["mobilenet-v2", "tiny-vit"])
def setup(request, mobilenet_v2_dir, tiny_vit_dir, mnist_digits):
    """``(folder, processor, batch)``: a model folder and 12 real digits 0-2 as one batch. The
    MobileNetV2 batch is at 64 x 64 (its convolutions take any size) to keep the test quick."""
    folder = mobilenet_v2_dir if request.param == "mobilenet-v2" else tiny_vit_dir
    processor = TASK.load_tokenizer(folder)
    if request.param == "mobilenet-v2":
        processor.size, processor.crop_size = {"shortest_edge": 72}, {"height": 64, "width": 64}
    images, labels = mnist_digits
    chosen = [
        i for digit in range(3) for i in [j for j, label in enumerate(labels) if label == digit][:4]
    ]
    examples = [{"image": images[i], "label": labels[i]} for i in chosen]
    batch = TASK.collate([TASK.tokenize(e, processor, LABELS) for e in examples], processor)
    return request.param, folder, batch


def load_base(folder, head_seed=0):
    torch.manual_seed(head_seed)
    return TASK.load_model(folder, LABELS, None)


def batchnorm_statistics(model):
    return {
        name: buffer.detach().clone()
        for name, buffer in model.named_buffers()
        if "running_" in name
    }


@torch.no_grad()
def evaluate(model, batch):
    model.eval()
    out = model(**batch)
    return out.logits.clone(), float(out.loss)


@pytest.mark.parametrize("name", ["lora", "freeze", "full"])
def test_method_trains_saves_loads_and_merges(name, setup, tmp_path):
    model_name, folder, batch = setup
    method = METHODS[name]
    base = load_base(folder)
    base_class = type(base)
    statistics = batchnorm_statistics(base)
    assert bool(statistics) == (model_name == "mobilenet-v2")
    settings = method.config_class() if method.config_class is not None else None
    model = method.apply(base, settings, KIND)
    _, loss_before = evaluate(model, batch)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATES[model_name][name], weight_decay=0.0)
    torch.manual_seed(0)
    for _ in range(STEPS):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    trained, loss_after = evaluate(model, batch)
    assert loss_after < LOSS_RATIO[model_name] * loss_before, (
        f"{model_name} {name}: loss {loss_before:.3f} -> {loss_after:.3f}"
    )

    after = batchnorm_statistics(
        model.get_base_model() if hasattr(model, "get_base_model") else model
    )
    changed = [key for key in statistics if not torch.equal(statistics[key], after[key])]
    if (
        name == "full"
    ):  # BatchNorm statistics train with everything else, and the state dict holds them
        assert changed or not statistics
    else:  # kept, because the saved state cannot hold them
        assert not changed, f"{name} changed BatchNorm statistics: {changed[:3]}"

    (tmp_path / "saved").mkdir()
    method.save(model, tmp_path / "saved")
    loaded = method.load(load_base(folder, head_seed=1), tmp_path / "saved", settings, KIND)
    torch.testing.assert_close(evaluate(loaded, batch)[0], trained, atol=1e-5, rtol=0)

    merged = method.merge(model)
    assert type(merged) is base_class
    assert not [n for n, m in merged.named_modules() if type(m).__module__.startswith("peft")]
    torch.testing.assert_close(evaluate(merged, batch)[0], trained, atol=1e-4, rtol=0)


def test_lora_auto_adapts_the_pointwise_convolutions_of_mobilenet(mobilenet_v2_dir):
    model = METHODS["lora"].apply(load_base(mobilenet_v2_dir), None, KIND)
    adapted = sorted(
        {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    )
    assert len(adapted) == 32  # 16 blocks x (expand_1x1, reduce_1x1)
    assert all(
        name.endswith(("expand_1x1.convolution", "reduce_1x1.convolution")) for name in adapted
    )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(
        "classifier.modules_to_save" in name for name in trainable
    )  # the new head trains in full
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.1 * sum(
        p.numel() for p in model.parameters()
    )


def test_prompt_tuning_refuses_an_image_classifier(tiny_vit_dir):
    with pytest.raises(UsageError, match="prompt_tuning.*image_classification"):
        METHODS["prompt_tuning"].apply(load_base(tiny_vit_dir), None, KIND)
