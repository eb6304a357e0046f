"""The ``vision:`` config section and the transform that makes image examples self-contained.

``transform_example`` runs after validation, before ``Task.tokenize``: it writes into each example
with images the folder its paths resolve against (from its location, as validation resolved them)
and the job's reading settings (``image_source``), and the job's ``vision.detail`` over each image's own
(:func:`tunewright.vision.prepare_example`). Examples without images pass through untouched.
"""

from __future__ import annotations

from tunewright import hookimpl
from tunewright.vision import VisionSettings, has_images, prepare_example


@hookimpl
def register_config_sections(register):
    register("vision", VisionSettings)


@hookimpl
def transform_example(example, config, location):
    if not isinstance(example, dict) or not has_images(example):
        return None
    return prepare_example(example, config, location=location)
