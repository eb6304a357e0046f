"""Making an example self-contained before it is tokenized.

``Task.tokenize(example, tokenizer, labels)`` receives the example alone: no location, no config.
:func:`prepare_example` (the vision plugin's ``transform_example``) writes into the example what
reading its images needs, so that :func:`~tunewright.vision.load_images` reads exactly what
validation accepted:

- ``image_source``: ``root``, the folder its relative paths resolve against, and the job's
  reading settings and limits (``allow_remote``, ``remote_timeout``, ``max_images``,
  ``max_image_bytes``, ``max_example_bytes``, ``max_pixels``);
- the job's ``vision.detail``, when set, written over each image's own ``detail``.

The input example is not changed; a new one is returned.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .checks import READING_KEYS, SOURCE_KEY, example_root, image_refs, local_path
from .settings import settings_of


def job_root(config: Any) -> str | None:
    """The one folder that holds every data file of a job config (``data.train``, and
    ``data.validation``/``data.test`` where they are files), or ``None`` when there is no config
    or they are in different folders. A fallback for callers that know no location."""
    data = getattr(config, "data", None)
    if data is None:
        return None
    folders = set()
    for value in (
        getattr(data, "train", None),
        getattr(data, "validation", None),
        getattr(data, "test", None),
    ):
        if isinstance(value, str):
            path = Path(value)
            folders.add(os.path.abspath(path if path.is_dir() else path.parent))
    return folders.pop() if len(folders) == 1 else None


def prepare_example(
    example: Any, config: Any = None, *, location: str | None = None, root: str | Path | None = None
) -> Any:
    """The example with ``image_source`` and the job's detail written in (see the module
    docstring); an example without images comes back unchanged (the same object). The folder is,
    in this order: what the example carries already (an image dataset format wrote it), ``root``,
    the folder of the data file ``location`` names (``data/train.jsonl:17``: what validation
    resolved against), or the one folder of the job's data files."""
    refs = image_refs(example)
    if not refs:
        return example
    settings = settings_of(config)
    result = dict(example)
    source = (
        dict(example.get(SOURCE_KEY) or {}) if isinstance(example.get(SOURCE_KEY), dict) else {}
    )
    if "root" not in source:
        if root is not None:
            found = os.path.abspath(root)
        else:
            found = example_root(example, location) if location else None
            found = found if found is not None else job_root(config)
        if found is not None and any(local_path(r.reference) for r in refs):
            source["root"] = found
    if config is not None:
        source.update({key: getattr(settings, key) for key in READING_KEYS})
    if source:
        result[SOURCE_KEY] = source
    if settings.detail is not None:
        if "image" in result:
            result["detail"] = settings.detail
        if isinstance(result.get("messages"), list):
            result["messages"] = copy.deepcopy(result["messages"])
            for ref in refs:
                if ref.message is None or ref.reference is None:
                    continue
                part = result["messages"][ref.message - 1]["content"][ref.part - 1]
                part["image_url"]["detail"] = settings.detail
    return result


__all__ = ["prepare_example", "job_root"]
