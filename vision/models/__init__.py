"""Vision models that tunewright builds from stock transformers parts.

- :mod:`.cnn_tower`: a MobileNetV2 vision tower that Llava can hold, and its ImageNet weights;
- :mod:`.composed`: the image+text model composed from that tower, a projector and a causal LM.

Nothing is registered at import time: :func:`register_auto_classes` tells transformers' Auto
classes about the tower, idempotently.
"""

from .cnn_tower import (
    CnnTowerConfig,
    CnnTowerModel,
    load_imagenet_backbone,
    register_auto_classes,
    torchvision_mobilenet_v2_config,
)
from .composed import (
    IMAGE_TOKEN,
    build_processor,
    chat_template,
    compose_image_text_model,
)

__all__ = [
    "CnnTowerConfig",
    "CnnTowerModel",
    "register_auto_classes",
    "load_imagenet_backbone",
    "torchvision_mobilenet_v2_config",
    "IMAGE_TOKEN",
    "build_processor",
    "chat_template",
    "compose_image_text_model",
]
