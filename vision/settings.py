"""The ``vision:`` config section: limits, detail, remote images, screening, what a refusal costs.

The defaults are the hosted fine-tuning services' numbers (OpenAI's vision fine-tuning: at most 10
images per example, at most 10 MB per image; JPEG, PNG or WEBP; no images in assistant turns), so
that data accepted here is accepted there::

    vision:
      max_images: 10            # images per example
      max_image_bytes: 10000000 # bytes per image (10 MB)
      max_example_bytes: 10000000
      max_pixels: 89478485      # width x height above which an image is a decompression bomb
      detail: null              # low | high | auto for every image of the job; null: each image's own
      allow_remote: false       # fetch http(s) images
      remote_timeout: 10        # seconds per fetch
      screening: true           # content screening plugins (faces) may exclude images
      on_refused: exclude       # exclude: the example is left out, the job goes on; error: stop
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tunewright import Section

#: Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``): above twice this, ``Image.open`` itself
#: raises before we can look, so ``max_pixels`` cannot be set higher than that
PILLOW_MAX_PIXELS = 89_478_485

Detail = Literal["low", "high", "auto"]
DETAILS = ("low", "high", "auto")


class VisionSettings(Section):
    """The ``vision:`` section of a job config (every key optional)."""

    max_images: int = Field(10, ge=1, description="images per example (OpenAI: 10)")
    max_image_bytes: int = Field(10_000_000, ge=1, description="bytes per image (OpenAI: 10 MB)")
    max_example_bytes: int = Field(10_000_000, ge=1, description="bytes of images per example")
    max_pixels: int = Field(
        PILLOW_MAX_PIXELS,
        ge=1,
        le=2 * PILLOW_MAX_PIXELS,
        description="width x height above which an image is refused as a decompression bomb, "
        "read from its header before it is decoded",
    )
    detail: Detail | None = Field(
        None,
        description="low, high or auto for every image of the job, over each image's own "
        "detail; null: each image's detail, auto where it names none",
    )
    allow_remote: bool = Field(False, description="fetch http(s) image URLs (off: refused)")
    remote_timeout: float = Field(10.0, gt=0, le=300, description="seconds allowed per fetch")
    screening: bool = Field(True, description="let content-screening plugins exclude images")
    on_refused: Literal["exclude", "error"] = Field(
        "exclude",
        description="exclude: a refused image costs its example only and the job goes "
        "on; error: a refused image stops the job before training",
    )


DEFAULT_SETTINGS = VisionSettings()


def settings_of(config: Any) -> VisionSettings:
    """The vision settings of ``config``: a job config (its ``vision:`` section, defaults where
    it has none), a :class:`VisionSettings`, a plain dict of keys, or ``None`` (the defaults)."""
    if config is None:
        return DEFAULT_SETTINGS
    if isinstance(config, VisionSettings):
        return config
    if isinstance(config, dict):
        return VisionSettings(**config)
    section = None
    getter = getattr(config, "section", None)
    if callable(getter):
        section = getter("vision")
    elif isinstance(getattr(config, "sections", None), dict):
        section = config.sections.get("vision")
    if section is None:
        return DEFAULT_SETTINGS
    if isinstance(section, VisionSettings):
        return section
    if isinstance(section, dict):
        return VisionSettings(**section)
    # A section validated against another model with the same fields (a subclass in a plugin).
    return VisionSettings(**section.model_dump())


__all__ = [
    "VisionSettings",
    "settings_of",
    "DEFAULT_SETTINGS",
    "PILLOW_MAX_PIXELS",
    "Detail",
    "DETAILS",
]
