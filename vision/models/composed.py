"""An image+text -> text model composed from stock transformers parts.

::

    LlavaForConditionalGeneration
    ├── model.vision_tower          CnnTowerModel (MobileNetV2, ImageNet)   (V, 3, S, S) -> (V, 49, 1280)
    ├── model.multi_modal_projector Linear(1280, D) - GELU - Linear(D, D)   (V, 49, 1280) -> (V, 49, D)
    ├── model.language_model        LlamaModel (SmolLM2-135M-Instruct)      D = 576
    └── lm_head                     tied to the input embeddings

The processor is stock ``LlavaProcessor``: ``MobileNetV2ImageProcessor`` resizes each view to
S x S and normalises it with ImageNet's mean and std; the tokenizer gains one ``<image>`` token,
which the processor repeats (S/32)² times per view; Llava overwrites those rows of the input
embeddings with the projected image tokens. The chat template is the language model's ChatML
with image parts rendered as ``<image>``.

Nothing here registers anything at import time: call :func:`register_auto_classes` (done by
:func:`compose_image_text_model`) before loading a saved model through the Auto classes.
"""

from __future__ import annotations

from typing import Any

import torch

from .cnn_tower import CnnTowerConfig, CnnTowerModel, register_auto_classes

IMAGE_TOKEN = "<image>"
#: ImageNet's statistics, which torchvision's MobileNetV2 weights were trained with
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def chat_template(default_system: str | None = None) -> str:
    """ChatML whose messages may hold OpenAI-style content parts: ``text`` parts are written as
    they are, ``image`` and ``image_url`` parts as ``<image>``. ``default_system`` is written as
    a system turn when a conversation has none (SmolLM2-Instruct's own template does this)."""
    head = ""
    if default_system:
        head = (
            "{%- if messages and messages[0]['role'] != 'system' -%}"
            "{{ '<|im_start|>system\\n" + default_system.replace("'", "\\'") + "<|im_end|>\\n' }}"
            "{%- endif -%}"
        )
    return (
        head + "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- elif part['type'] in ('image', 'image_url') -%}{{ '" + IMAGE_TOKEN + "' }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def default_system_prompt(tokenizer) -> str | None:
    """The system turn a tokenizer's own chat template adds when a conversation has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    marker = "\u2063user\u2063"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    except Exception:
        return None
    prefix = "<|im_start|>system\n"
    if text.startswith(prefix) and "<|im_end|>" in text:
        return text[len(prefix) : text.index("<|im_end|>")]
    return None


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` as a special token (if missing); return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [IMAGE_TOKEN]}, replace_additional_special_tokens=False
        )
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def build_processor(tokenizer, image_size: int = 224, default_system: str | None = None):
    """A ``LlavaProcessor`` for the composed model: views resized to ``image_size`` squared,
    (image_size/32)² ``<image>`` tokens per view, the ChatML image template."""
    from transformers import LlavaProcessor, MobileNetV2ImageProcessor

    add_image_token(tokenizer)
    template = chat_template(default_system)
    tokenizer.chat_template = template
    image_processor = MobileNetV2ImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=2,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=32,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )


def compose_image_text_model(
    language_model,
    tokenizer,
    tower_config: CnnTowerConfig | None = None,
    *,
    imagenet_weights: bool = True,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Compose ``(LlavaForConditionalGeneration, LlavaProcessor)`` from a causal LM and its
    tokenizer (both changed in place: the tokenizer gains ``<image>``).

    The language model's weights are copied strictly; the tower gets the ImageNet MobileNetV2
    weights when ``imagenet_weights`` (it must then be the standard MobileNetV2); the projector
    is initialised from ``seed``. The embedding matrix grows by the one new token, and the head
    stays tied to it when the language model's was.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    register_auto_classes()
    tower_config = tower_config or CnnTowerConfig()
    image_token_id = add_image_token(tokenizer)
    text_config = language_model.config
    config = LlavaConfig(
        vision_config=tower_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        image_seq_length=tower_config.tokens_per_view,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language_model.model.state_dict(), strict=True)
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(language_model.lm_head.state_dict(), strict=True)
    if imagenet_weights:
        from .cnn_tower import load_imagenet_backbone

        load_imagenet_backbone(model.model.vision_tower)
    # new rows start at the mean of the old ones (transformers' default), not at random
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.tie_weights()
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        value = getattr(language_model.generation_config, key, None)
        if value is not None:
            setattr(model.generation_config, key, value)
    model.config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(
        tokenizer, tower_config.image_size, default_system=default_system_prompt(tokenizer)
    )
    model.eval()
    return model, processor


__all__ = [
    "IMAGE_TOKEN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "chat_template",
    "default_system_prompt",
    "add_image_token",
    "build_processor",
    "compose_image_text_model",
    "CnnTowerModel",
]
