"""An image processor's settings, applied with Pillow and numpy exactly as transformers applies them.

The tuned model's image processor (its ``preprocessor_config.json``) is the one preprocessing
definition. :func:`image_settings` reads it at export time into the bundle manifest, refusing any
setting this runtime cannot reproduce; :func:`pixel_values` applies it on the device::

    file ──Pillow: decode, EXIF orientation, RGB──► uint8 (H, W, 3)
         ──resize: to (height, width), or the shortest edge to N keeping the aspect ratio──►
         ──centre crop (height, width)──► ──x * rescale_factor (float64 -> float32)──►
         ──(x - mean) / std (float32)──► (3, H, W)

Each step follows transformers' ``image_transforms`` (``get_resize_output_image_size``, Pillow's
``resize`` with ``reducing_gap=None``, ``center_crop``'s integer offsets, ``rescale`` in float64,
``normalize`` in float32), so that the values equal the processor's own, not merely come close.
No torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: settings that change nothing this runtime does when they have these values
_HARMLESS = {
    "do_reduce_labels": (False, None),
    "do_convert_rgb": (True, None, False),
    "do_pad": (False, None),
    "crop_pct": (None,),
    "do_flip_channel_order": (False, None),
}
_KNOWN = {
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "image_processor_type",
    "processor_class",
    "_processor_class",
    "input_data_format",
    "data_format",
    "default_to_square",
    "return_tensors",
    "device",
    "disable_grouping",
    "_valid_processor_keys",
    "model_input_names",
    "auto_map",
    "image_seq_length",
}


class UnsupportedProcessor(ValueError):
    """The image processor does something the edge runtime does not reproduce."""


def image_settings(processor: Any) -> dict[str, Any]:
    """The manifest's ``preprocessing`` for an image processor (ViT-style, MobileNet-style...).

    Raises :class:`UnsupportedProcessor` naming the setting when the runtime could not reproduce
    the processor exactly (ConvNeXt's ``crop_pct``, padding, a size without height/width or
    shortest_edge...)."""
    config = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    name = type(processor).__name__
    for key, value in config.items():
        if key in _HARMLESS:
            if value not in _HARMLESS[key]:
                raise UnsupportedProcessor(
                    f"{name}: {key}={value!r} is not reproduced by the edge runtime"
                )
        elif key not in _KNOWN and key.startswith("do_") and value:
            raise UnsupportedProcessor(f"{name}: {key} is not reproduced by the edge runtime")
    size = dict(config.get("size") or {})
    if set(size) == {"shortest_edge"}:
        resize: dict[str, int] = {"shortest_edge": int(size["shortest_edge"])}
    elif set(size) == {"height", "width"}:
        resize = {"height": int(size["height"]), "width": int(size["width"])}
    else:
        raise UnsupportedProcessor(
            f"{name}: size {size!r} is not reproduced by the edge runtime (allowed: "
            "{height, width} or {shortest_edge})"
        )
    crop = None
    if config.get("do_center_crop"):
        crop_size = dict(config.get("crop_size") or {})
        if set(crop_size) != {"height", "width"}:
            raise UnsupportedProcessor(f"{name}: crop_size {crop_size!r} needs height and width")
        crop = {"height": int(crop_size["height"]), "width": int(crop_size["width"])}
        smallest = (
            (resize["shortest_edge"],) * 2
            if "shortest_edge" in resize
            else (resize["height"], resize["width"])
        )
        if config.get("do_resize", True) and (
            crop["height"] > smallest[0] or crop["width"] > smallest[1]
        ):
            raise UnsupportedProcessor(
                f"{name}: a crop of {crop} larger than the resized image pads it, which "
                "the edge runtime does not reproduce"
            )
    if not config.get("do_resize", True) or crop is None:
        output = resize if "height" in resize else None
    else:
        output = crop
    if output is None:
        raise UnsupportedProcessor(
            f"{name}: without a fixed output size (height and width) the bundle's "
            "input would change with every image"
        )
    channels = 3
    mean = config.get("image_mean", [0.5] * channels)
    std = config.get("image_std", [0.5] * channels)
    return {
        "kind": "image",
        "processor": name,
        "do_resize": bool(config.get("do_resize", True)),
        "resize": resize,
        "resample": int(config.get("resample", 2)),
        "crop": crop,
        "size": output,  # what reaches the model: (height, width)
        "do_rescale": bool(config.get("do_rescale", True)),
        "rescale_factor": float(config.get("rescale_factor", 1 / 255)),
        "do_normalize": bool(config.get("do_normalize", True)),
        "image_mean": [
            float(x) for x in (mean if isinstance(mean, (list, tuple)) else [mean] * channels)
        ],
        "image_std": [
            float(x) for x in (std if isinstance(std, (list, tuple)) else [std] * channels)
        ],
        "exif_transpose": True,
        "layout": "NCHW",
        "channels": "RGB",
    }


def open_rgb(image: Any):
    """A PIL image from a path or a PIL image, upright (EXIF orientation applied) and RGB: what
    tunewright's validation and training see."""
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):
        image = Image.open(image)
    image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_shape(height: int, width: int, resize: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in resize:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize["shortest_edge"], int(resize["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return resize["height"], resize["width"]


def check_views(views: dict[str, Any] | None) -> str | None:
    """Why this runtime cannot cut the views a bundle records (another low-detail side), or ``None``."""
    if not views:
        return None
    from tunewright.vision import LOW_SIZE

    if int(views.get("low_side", LOW_SIZE)) != LOW_SIZE:
        return (
            f"the bundle's model saw images fit within {views.get('low_side')} pixels; this tunewright fits "
            f"them within {LOW_SIZE}: run it with the version that made it"
        )
    return None


def training_view(image, views: dict[str, Any] | None):
    """The view of ``image`` a classifier trained on (:meth:`tunewright.vision` detail): fit within
    ``low_side`` x ``low_side`` (never enlarged) when the recorded ``detail`` (the job's, or by
    size where none) resolves to low; the image itself otherwise or when nothing is recorded."""
    if not views:
        return image
    from tunewright.vision import low_view, resolve_detail

    if resolve_detail(views.get("detail"), image.size) == "low":
        view = low_view(image)
        return view if view.mode == "RGB" else view.convert("RGB")
    return image


def pixel_values(
    images: Sequence[Any], settings: dict[str, Any], *, exif_transpose: bool | None = None
) -> np.ndarray:
    """``(N, 3, H, W)`` float32 model input for images (paths or PIL images), per ``settings``
    (a manifest's ``preprocessing``): the view training saw (:func:`training_view`), then the
    image processor's steps."""
    rows = []
    upright = settings.get("exif_transpose", False) if exif_transpose is None else exif_transpose
    for image in images:
        if upright:
            image = open_rgb(image)
        else:
            from PIL import Image

            image = image if isinstance(image, Image.Image) else Image.open(image)
            image = image.convert("RGB")
        image = training_view(image, settings.get("views"))
        resize = settings.get("resize") or settings["size"]
        if settings.get("do_resize", True):
            height, width = _resize_shape(image.height, image.width, resize)
            image = image.resize(
                (width, height), resample=int(settings.get("resample", 2)), reducing_gap=None
            )
        array = np.asarray(image)  # (H, W, 3) uint8
        crop = settings.get("crop")
        if crop:
            top = (array.shape[0] - crop["height"]) // 2
            left = (array.shape[1] - crop["width"]) // 2
            array = array[top : top + crop["height"], left : left + crop["width"]]
        if settings.get("do_rescale", True):
            array = (array.astype(np.float64) * settings.get("rescale_factor", 1 / 255)).astype(
                np.float32
            )
        else:
            array = array.astype(np.float32)
        if settings.get("do_normalize", True):
            mean = np.asarray(settings["image_mean"], dtype=np.float32)
            std = np.asarray(settings["image_std"], dtype=np.float32)
            array = (array - mean) / std
        rows.append(array.transpose(2, 0, 1))  # (3, H, W)
    return np.stack(rows).astype(np.float32, copy=False)
