"""tunewright.vision: images in examples, checked as strictly as the hosted services check them.

What a vision task (``Task.validate`` / ``Task.tokenize``) or a screening plugin calls:

==============================  ================================================================
``check_example(ex, loc, cfg)`` every image rule of one example -> ``list[ImageProblem]``
                                (``image N (ref): reason (allowed)``; ``"excluded"`` unless
                                ``vision.on_refused: error``). From ``Task.validate``.
``load_images(ex)``             the decoded images of a valid example -> ``list[ExampleImage]``
                                (``.image``: RGB/RGBA, oriented; ``.detail()``: low or high;
                                ``.ref``: where it is). Raises ``ImageRefused``. From
                                ``Task.tokenize``.
``views(image, detail)``        what the model sees: ``[overview]`` at low detail,
                                ``[overview, tile, ...]`` at high (``tunewright.vision.detail``).
``view_pixels / view_count /``  accounting for an image size at a detail (no decoding)
``image_tokens``
``summarize(examples, cfg)``    facts for ``tunewright validate`` -> dict; ``render_summary(s)``
                                -> report lines. A task's ``summarize`` / ``render_summary``.
``screen_example(ex, loc,``     run a content screener over the accepted images of an example ->
``cfg, screener)``              ``"excluded"`` problems. From a plugin's ``validate_example``.
``settings_of(cfg)``            the ``vision:`` section (:class:`VisionSettings`) of a job config
``image_refs(ex)``              where an example's images are, without reading them
``check_image(bytes)``          one image from its bytes -> ``CheckedImage`` or ``ImageRefused``
``read_reference(ref, root=)``  a data URL, a path in ``root`` or an http(s) URL -> bytes
==============================  ================================================================

Examples carry images as the hosted fine-tuning APIs take them: ``{"image": ref, "label": ...}``
for classification (``"detail"`` optional), and ``{"type": "image_url", "image_url": {"url":
ref, "detail": "low" | "high" | "auto"}}`` content parts in user or system turns for chat. A
reference is a data URL, a path relative to the data file's folder, or an http(s) URL (with
``vision.allow_remote``).

``Task.tokenize`` gets no location and no config, so the image dataset formats and the vision
plugin's ``transform_example`` (:func:`prepare_example`) write into each example what reading its
images needs (``image_source``: its folder and the job's reading settings) and the job's
``vision.detail``. Nothing here imports torch; importing this package changes no global state.
"""

from .checks import (
    ALLOWED_FORMATS,
    SOURCE_KEY,
    CheckedImage,
    ExampleCheck,
    ExampleImage,
    ImageProblem,
    ImageRef,
    Screener,
    check_example,
    check_image,
    check_reference,
    example_root,
    has_images,
    image_refs,
    inspect_example,
    load_images,
    screen_example,
    sniff_format,
)
from .detail import (
    LOW_SIZE,
    LOW_TOKENS,
    TILE,
    TILE_TOKENS,
    detail_costs,
    fit_within,
    high_size,
    image_tokens,
    low_size,
    low_view,
    resolve_detail,
    tile_boxes,
    view_count,
    view_pixels,
    view_sizes,
    views,
)
from .errors import REASONS, ImageRefused
from .images import ImageSource, read_reference, shorten
from .settings import DETAILS, VisionSettings, settings_of
from .summary import refusal_counts, render_summary, summarize
from .transform import job_root, prepare_example

__all__ = [
    # checks
    "check_example",
    "load_images",
    "inspect_example",
    "check_image",
    "check_reference",
    "sniff_format",
    "image_refs",
    "has_images",
    "example_root",
    "ImageRef",
    "ExampleImage",
    "ExampleCheck",
    "CheckedImage",
    "ImageProblem",
    "ImageRefused",
    "REASONS",
    "ALLOWED_FORMATS",
    "SOURCE_KEY",
    # references
    "read_reference",
    "ImageSource",
    "shorten",
    # detail
    "views",
    "low_view",
    "resolve_detail",
    "view_sizes",
    "view_count",
    "view_pixels",
    "image_tokens",
    "detail_costs",
    "fit_within",
    "low_size",
    "high_size",
    "tile_boxes",
    "LOW_SIZE",
    "TILE",
    "LOW_TOKENS",
    "TILE_TOKENS",
    "DETAILS",
    # summary
    "summarize",
    "render_summary",
    "refusal_counts",
    # screening
    "screen_example",
    "Screener",
    # settings and transform
    "VisionSettings",
    "settings_of",
    "prepare_example",
    "job_root",
]
