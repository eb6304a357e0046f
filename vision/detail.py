"""Detail: how much of an image reaches the model, as the hosted services define it.

``low``
    One view: the image fit within 512 x 512, aspect kept, never enlarged (OpenAI: "fits within
    512 x 512 ... without enlarging smaller images"; 85 image tokens whatever its size).
``high``
    The low view as an overview, plus tiles: the image fit within 2048 x 2048, then scaled so that
    its shortest side is at most 768 (never enlarged), cut into 512 x 512 tiles (the last row and
    column smaller). OpenAI counts 85 + 170 tokens per tile: 1024 x 1024 -> 765, 2048 x 4096 -> 1105.
``auto`` (the default)
    ``low`` when the image fits within 512 x 512 already (high would add tiles that show nothing
    the overview does not: the image at full resolution is the overview), ``high`` otherwise.

::

    views(image, "low")   -> [overview]                   overview fits 512 x 512
    views(image, "high")  -> [overview, tile, tile, ...]  tiles of the image scaled to short side <= 768

A task decides how a view becomes model input (a classifier may take the overview only; an
image-to-text model may spend a fixed number of tokens per view); :func:`view_pixels`,
:func:`view_count` and :func:`image_tokens` give the accounting for summaries and run metrics.
The geometry functions take a ``(width, height)`` size and decode nothing.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from .settings import DETAILS

LOW_SIZE = 512
HIGH_FIT = 2048
HIGH_SHORT_SIDE = 768
TILE = 512
#: OpenAI's image tokens (gpt-4o family): the overview, and each high-detail tile
LOW_TOKENS = 85
TILE_TOKENS = 170

Size = tuple[int, int]
Box = tuple[int, int, int, int]


def resolve_detail(detail: str | None, size: Size) -> str:
    """``"low"`` or ``"high"`` for an image of ``size`` whose requested detail is ``detail``
    (``None`` or ``"auto"``: low when it fits within 512 x 512, else high)."""
    if detail not in (None, *DETAILS):
        raise ValueError(f"detail {detail!r} (allowed: {', '.join(DETAILS)})")
    if detail in ("low", "high"):
        return detail
    width, height = size
    return "low" if width <= LOW_SIZE and height <= LOW_SIZE else "high"


def fit_within(size: Size, box: Size) -> Size:
    """``size`` scaled down, aspect kept, to fit within ``box``; unchanged when it fits."""
    width, height = size
    scale = min(1.0, box[0] / width, box[1] / height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def low_size(size: Size) -> Size:
    """The size of the low-detail view (and of the high-detail overview)."""
    return fit_within(size, (LOW_SIZE, LOW_SIZE))


def high_size(size: Size) -> Size:
    """The size the image is tiled at in high detail: within 2048 x 2048, shortest side <= 768."""
    width, height = fit_within(size, (HIGH_FIT, HIGH_FIT))
    short = min(width, height)
    if short > HIGH_SHORT_SIDE:
        scale = HIGH_SHORT_SIDE / short
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


def tile_boxes(size: Size, tile: int = TILE) -> list[Box]:
    """The ``(left, top, right, bottom)`` boxes of the high-detail tiles, in the coordinates of
    :func:`high_size`, row by row."""
    width, height = high_size(size)
    return [
        (left, top, min(left + tile, width), min(top + tile, height))
        for top in range(0, height, tile)
        for left in range(0, width, tile)
    ]


def view_sizes(size: Size, detail: str | None) -> list[Size]:
    """The sizes of the views :func:`views` makes for an image of ``size``."""
    detail = resolve_detail(detail, size)
    overview = low_size(size)
    if detail == "low":
        return [overview]
    return [overview] + [
        (right - left, bottom - top) for left, top, right, bottom in tile_boxes(size)
    ]


def view_count(size: Size, detail: str | None) -> int:
    """How many views: 1 in low detail, 1 + tiles in high."""
    return len(view_sizes(size, detail))


def view_pixels(size: Size, detail: str | None) -> int:
    """Pixels that reach the model: the sum of the views' areas."""
    return sum(w * h for w, h in view_sizes(size, detail))


def image_tokens(size: Size, detail: str | None) -> int:
    """OpenAI's image tokens for gpt-4o-style models: 85 in low detail, 85 + 170 per tile in high."""
    detail = resolve_detail(detail, size)
    if detail == "low":
        return LOW_TOKENS
    width, height = high_size(size)
    return LOW_TOKENS + TILE_TOKENS * math.ceil(width / TILE) * math.ceil(height / TILE)


def resize_to(image: Image.Image, size: Size) -> Image.Image:
    """``image`` at ``size`` (the same object when it is that size already)."""
    if image.size == tuple(size):
        return image
    # reducing_gap: a fast box reduction first, then bicubic; indistinguishable from a plain
    # bicubic resize at these factors and several times faster on large photos
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def low_view(image: Image.Image) -> Image.Image:
    """The image fit within 512 x 512, never enlarged."""
    return resize_to(image, low_size(image.size))


def views(image: Image.Image, detail: str | None) -> list[Image.Image]:
    """The views of an image the model sees at ``detail`` (``low``, ``high``, ``auto`` or
    ``None``): ``[overview]`` in low detail, ``[overview, tile, ...]`` in high (see the module
    docstring). Views keep the image's mode (RGB or RGBA)."""
    detail = resolve_detail(detail, image.size)
    overview = low_view(image)
    if detail == "low":
        return [overview]
    scaled = resize_to(image, high_size(image.size))
    return [overview] + [scaled.crop(box) for box in tile_boxes(image.size)]


def detail_costs(size: Size, detail: Any = None) -> dict[str, dict[str, int]]:
    """Views, pixels and image tokens of one image at low, at high and at ``detail`` (as set):
    ``{"low": {...}, "high": {...}, "as_set": {...}}``, each ``{"views", "pixels", "tokens"}``."""

    def cost(d: str | None) -> dict[str, int]:
        return {
            "views": view_count(size, d),
            "pixels": view_pixels(size, d),
            "tokens": image_tokens(size, d),
        }

    return {"low": cost("low"), "high": cost("high"), "as_set": cost(detail)}


__all__ = [
    "resolve_detail",
    "fit_within",
    "low_size",
    "high_size",
    "tile_boxes",
    "view_sizes",
    "view_count",
    "view_pixels",
    "image_tokens",
    "views",
    "low_view",
    "resize_to",
    "detail_costs",
    "LOW_SIZE",
    "HIGH_FIT",
    "HIGH_SHORT_SIDE",
    "TILE",
    "LOW_TOKENS",
    "TILE_TOKENS",
]
