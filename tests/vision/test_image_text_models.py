"""The CNN vision tower and the composed image+text model (tunewright.vision.models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunewright.vision.models import (
    CnnTowerConfig,
    CnnTowerModel,
    compose_image_text_model,
    load_imagenet_backbone,
    register_auto_classes,
    torchvision_mobilenet_v2_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_tower(image_size: int = 64) -> CnnTowerModel:
    torch.manual_seed(0)
    config = CnnTowerConfig(
        backbone_config=torchvision_mobilenet_v2_config(depth_multiplier=0.35).to_dict(),
        image_size=image_size,
    )
    return CnnTowerModel(config)


def test_tower_turns_the_feature_map_into_one_token_per_32_pixels():
    tower = _small_tower(96).eval()
    out = tower(torch.randn(2, 3, 96, 96), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 9, tower.config.hidden_size)  # (96/32)² tokens
    assert out.hidden_states[-1] is out.last_hidden_state
    assert tower.config.tokens_per_view == 9
    # token k is the feature vector of feature-map cell (k // 3, k % 3)
    feature_map = tower.backbone(torch.randn(1, 3, 96, 96)).last_hidden_state
    assert feature_map.shape[-2:] == (3, 3)


def test_tower_keeps_batch_norm_statistics_while_training():
    tower = _small_tower()
    before = {k: v.clone() for k, v in tower.state_dict().items() if "running_mean" in k}
    tower.train()
    assert tower.training
    tower(torch.randn(4, 3, 64, 64) * 5 + 3)
    after = {k: v for k, v in tower.state_dict().items() if "running_mean" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and the same input gives the same tokens in train and eval mode
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        trained_mode = tower.train()(x).last_hidden_state
        eval_mode = tower.eval()(x).last_hidden_state
    torch.testing.assert_close(trained_mode, eval_mode)


def test_tower_computes_in_the_dtype_of_its_weights():
    tower = _small_tower().to(torch.bfloat16).eval()
    out = tower(torch.randn(1, 3, 64, 64))  # float32 pixels into a bf16 tower
    assert out.last_hidden_state.dtype == torch.bfloat16


def test_imagenet_weights_are_the_packaged_mobilenet_v2s():
    from tunewright.vision.classifiers import mobilenet_v2_imagenet

    config = CnnTowerConfig()  # the standard MobileNetV2 at 224: 49 tokens of 1280 features
    assert (config.hidden_size, config.tokens_per_view) == (1280, 49)
    tower = CnnTowerModel(config).eval()
    load_imagenet_backbone(tower)
    classifier = mobilenet_v2_imagenet()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = tower(x).last_hidden_state  # (1, 49, 1280)
        # the classifier's head on the tower's tokens, pooled, is the classifier itself
        torch.testing.assert_close(classifier.classifier(tokens.mean(1)), classifier(x).logits)


def test_imagenet_weights_refuse_another_architecture():
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_imagenet_backbone(_small_tower())  # depth 0.35: other shapes


def test_register_is_explicit_and_idempotent(tiny_image_text_dir, tmp_path):
    script = (
        "import sys\n"
        "from transformers import AutoConfig\n"
        "import tunewright.vision.models as models\n"
        "try:\n"
        f"    AutoConfig.from_pretrained({str(tiny_image_text_dir)!r})\n"
        "    print('loaded without registering')\n"
        "except (KeyError, ValueError) as exc:\n"
        "    print('refused before registering')\n"
        "models.register_auto_classes(); models.register_auto_classes()\n"
        f"print(type(AutoConfig.from_pretrained({str(tiny_image_text_dir)!r}).vision_config).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "before", "registering", "CnnTowerConfig"]


def _tiny_parts(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    language_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tower = CnnTowerConfig(
        backbone_config=torchvision_mobilenet_v2_config(depth_multiplier=0.35).to_dict(),
        image_size=64,
    )
    return tokenizer, language_model, tower


def test_composed_model_is_the_language_model_on_text(tiny_llama_dir):
    tokenizer, language_model, tower = _tiny_parts(tiny_llama_dir)
    vocab = len(tokenizer)
    model, processor = compose_image_text_model(
        language_model, tokenizer, tower, imagenet_weights=False
    )
    assert len(tokenizer) == vocab + 1 and processor.image_token == "<image>"
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied
    ids = tokenizer("The cat sat on the mat", return_tensors="pt")
    with torch.no_grad():
        expected = language_model(**ids).logits
        got = model(**ids).logits
    assert got.shape[-1] == vocab + 1
    torch.testing.assert_close(got[..., :vocab], expected)


def test_processor_expands_each_view_into_the_towers_tokens(tiny_llama_dir):
    tokenizer, language_model, tower = _tiny_parts(tiny_llama_dir)
    model, processor = compose_image_text_model(
        language_model, tokenizer, tower, imagenet_weights=False
    )
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "Two views?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<image>") == 2 and text.endswith("<|im_start|>assistant\n")
    views = [Image.new("RGB", (100, 50), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 0, 255))]
    inputs = processor(text=text, images=views, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    assert (
        int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * tower.tokens_per_view
    )
    with torch.no_grad():
        out = model(**inputs)
    assert out.image_hidden_states.shape == (
        2 * tower.tokens_per_view,
        model.config.text_config.hidden_size,
    )
    # the views change the answer: the image rows are not ignored
    other = dict(inputs, pixel_values=torch.flip(inputs["pixel_values"], dims=[0]))
    with torch.no_grad():
        assert not torch.allclose(model(**other).logits[0, -1], out.logits[0, -1])


def test_round_trip_through_the_auto_classes(tiny_image_text_dir):
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaForConditionalGeneration,
    )

    register_auto_classes()
    model = AutoModelForImageTextToText.from_pretrained(tiny_image_text_dir)
    processor = AutoProcessor.from_pretrained(tiny_image_text_dir)
    assert isinstance(model, LlavaForConditionalGeneration)
    assert type(model.model.vision_tower).__name__ == "CnnTowerModel"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.fromarray((np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8))
    inputs = processor(text=text, images=[image], return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits
    folder = Path(tiny_image_text_dir).parent / "round-trip"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    again = AutoModelForImageTextToText.from_pretrained(folder)
    processor_again = AutoProcessor.from_pretrained(folder)
    inputs_again = processor_again(text=text, images=[image], return_tensors="pt")
    assert all(torch.equal(inputs[k], inputs_again[k]) for k in inputs)
    with torch.no_grad():
        after = again(**inputs_again).logits
    assert torch.equal(before, after)


@pytest.mark.slow
def test_packaged_model_builds_and_keeps_smollm2(tmp_path):
    """The real build: ImageNet MobileNetV2 + SmolLM2-135M-Instruct, written atomically, loaded
    back through the Auto classes; on text it is SmolLM2."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    from tunewright import atomic_directory, get_plugin_manager
    from tunewright.plugins.vision.image_text import build_composed_folder

    smollm2 = Path(
        get_plugin_manager().registries.kind("models")["smollm2-135m-instruct"].resolve()
    )
    target = tmp_path / "composed"
    build_composed_folder(smollm2, target, atomic_directory)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    register_auto_classes()
    model = AutoModelForImageTextToText.from_pretrained(target).eval()
    processor = AutoProcessor.from_pretrained(target)
    sizes = {
        name: sum(p.numel() for p in part.parameters())
        for name, part in (
            ("tower", model.model.vision_tower),
            ("projector", model.model.multi_modal_projector),
        )
    }
    assert sizes == {"tower": 2_223_872, "projector": 1280 * 576 + 576 + 576 * 576 + 576}
    assert processor.image_processor.image_mean == [0.485, 0.456, 0.406]
    lm = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = lm.generate(prompt, max_new_tokens=8, do_sample=False)
        got = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=8,
            do_sample=False,
        )
    assert got.tolist() == expected.tolist()
    # the composed template renders text-only chats exactly as SmolLM2's own
    text = processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
