"""Image classification data: a folder per class, or JSONL / CSV naming an image and a label.

===============  ==========================  ===================================================
format           reads                       one example
===============  ==========================  ===================================================
``image-folder`` a folder (``data/train``)   ``data/train/<label>/<image>``: every file in a
                 of class folders            class folder is an example of that class (a file
                                             that is not an image is refused, not skipped)
``image-label``  ``.jsonl`` ``.json``        ``{"image": "cats/1.png", "label": "cat"}``,
                                             ``"detail"`` optional; ``format: auto`` knows it
                                             by the keys ``image`` and ``label``
``image-csv``    ``.csv`` ``.tsv``           a header naming an image column (``image``,
                                             ``image_path``, ``path`` or ``file``) and a label
                                             column (``label``, ``category`` or ``class``),
                                             ``detail`` optional
===============  ==========================  ===================================================

Every example is ``{"image": reference, "label": ..., "image_source": {"root": folder}}``: the
reference as written (a path relative to the data file's folder, a data URL or an http(s) URL)
and the folder it resolves against, since a task tokenizes an example without knowing its file.
Labels read from JSON keep their type; from CSV and folder names, whole numbers become ``int``
and the rest stay text. Hidden files and folders (``.DS_Store``) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunewright import DataError, hookimpl
from tunewright.plugins.common import records
from tunewright.vision import DETAILS, SOURCE_KEY

IMAGE_TASK = "image-classification"
IMAGE_COLUMNS = ("image", "image_path", "path", "file")
# The built-in text csv format's column names: a text CSV read by this reader first (both read
# .csv) must still be recognised by that format, whose detect() looks for "text" and "label".
_TEXT_COLUMNS = ("text", "sentence")


def _source(path: Path) -> dict:
    return {"root": os.path.abspath(path)}


def image_example(record: Any) -> dict:
    """``{"image", "label", "detail"?, "image_source"?}`` from a record, or :class:`DataError`."""
    if not isinstance(record, dict):
        raise DataError(
            f'expected an object {{"image": ..., "label": ...}}, got {records.type_name(record)}'
        )
    missing = [key for key in ("image", "label") if key not in record]
    if missing:
        found = ", ".join(k for k in record if k != SOURCE_KEY) or "no keys"
        raise DataError(
            f"no {' or '.join(repr(k) for k in missing)} key (found: {found}; expected "
            '{"image": "cats/1.png", "label": "cat"})'
        )
    image, label = record["image"], record["label"]
    if not isinstance(image, str) or not image.strip():
        raise DataError(
            f"'image' must be a path, a data URL or an http(s) URL, got {records.type_name(image)}"
        )
    if (
        isinstance(label, bool)
        or not isinstance(label, (str, int, float))
        or (isinstance(label, str) and not label.strip())
    ):
        raise DataError(
            f"'label' must be a class name or a whole number, got {records.type_name(label)}"
            + (" (empty)" if isinstance(label, str) else "")
        )
    example = {"image": image, "label": label}
    detail = record.get("detail")
    if detail not in (None, ""):
        if detail not in DETAILS:
            raise DataError(f"'detail' is {detail!r} (allowed: {', '.join(DETAILS)})")
        example["detail"] = detail
    if isinstance(record.get(SOURCE_KEY), dict):
        example[SOURCE_KEY] = record[SOURCE_KEY]
    return example


def _detect(record: Any) -> bool:
    return isinstance(record, dict) and "image" in record and "label" in record


# ---------------------------------------------------------------------------------------------
# A folder per class
# ---------------------------------------------------------------------------------------------


class ImageFolderFormat:
    """``data/train/<label>/<image>``: the folder names are the labels."""

    name = "image-folder"
    description = "a folder of class folders: data/train/<label>/<image> (JPEG, PNG or WEBP)"
    directory = True
    suffixes: tuple[str, ...] = ()

    def detect(self, record: Any) -> bool:
        return _detect(record)

    def task_for(self, examples: list[dict]) -> str:
        return IMAGE_TASK

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        """One record per file of each class folder, numbered in sorted order (folders, then
        files), so that ``data/train:17`` always names the same file."""
        path = Path(path)
        source = _source(path)
        number = 0
        for entry in sorted(path.iterdir(), key=lambda p: p.name):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                number += 1
                yield (
                    number,
                    DataError(
                        f"{entry.name} is a file outside any class folder (expected "
                        f"{path}/<label>/<image>; move it into the folder of its class)"
                    ),
                )
                continue
            label = (
                records.parse_label(entry.name)
                if records.INTEGER.fullmatch(entry.name)
                else entry.name
            )
            for item in sorted(entry.iterdir(), key=lambda p: p.name):
                if item.name.startswith("."):
                    continue
                number += 1
                reference = f"{entry.name}/{item.name}"
                if item.is_dir():
                    yield (
                        number,
                        DataError(
                            f"{reference} is a folder inside class folder {entry.name} "
                            f"(expected images directly in {path}/<label>/)"
                        ),
                    )
                    continue
                yield number, {"image": reference, "label": label, SOURCE_KEY: source}

    def to_example(self, record: Any) -> dict:
        return image_example(record)


# ---------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------


class ImageLabelFormat:
    """JSON Lines (or one JSON array) of ``{"image": reference, "label": ...}``."""

    name = "image-label"
    description = 'JSONL {"image": "cats/1.png", "label": "cat"} for image classification'
    suffixes: tuple[str, ...] = (".jsonl", ".json", ".ndjson")

    def detect(self, record: Any) -> bool:
        return _detect(record)

    def task_for(self, examples: list[dict]) -> str:
        return IMAGE_TASK

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        source = _source(Path(path).parent)
        for number, record in records.json_records(Path(path)):
            if isinstance(record, dict):
                record = {**record, SOURCE_KEY: source}
            yield number, record

    def to_example(self, record: Any) -> dict:
        return image_example(record)


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


class ImageCsvFormat:
    """CSV/TSV with an image column and a label column (``image,label``)."""

    name = "image-csv"
    description = (
        "CSV/TSV with a header naming an image column (image, image_path, path, file) "
        "and a label column (label, category, class)"
    )
    suffixes: tuple[str, ...] = (".csv", ".tsv")

    def detect(self, record: Any) -> bool:
        return _detect(record)

    def task_for(self, examples: list[dict]) -> str:
        return IMAGE_TASK

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        """Rows as records keyed by column: the image and label columns under ``image`` and
        ``label`` (labels parsed as numbers where they are), any other column under its
        lowercased name. A text CSV (``text,label``) yields its rows too, with the messages the
        text ``csv`` format gives, so that ``format: auto`` hands it on to that format: the engine
        reads a file with the first format for its suffix and re-reads it with the format that
        recognises its first record."""
        source = _source(Path(path).parent)
        header: list[str] | None = None
        names: list[str] = []
        for number, row in records.csv_rows(Path(path)):
            if isinstance(row, DataError):
                yield number, row
                continue
            if header is None:
                header, names = row, self._names(row)
                problem = self._header_problem(header, names)
                if problem is not None:
                    yield number, problem
                    return
                continue
            record: dict[str, Any] = {}
            for name, cell in zip(names, row):
                record.setdefault(
                    name, records.parse_label(cell) if name == "label" else cell.strip()
                )
            if "image" in record:
                record[SOURCE_KEY] = source
            yield number, record

    @staticmethod
    def _names(header: list[str]) -> list[str]:
        names = [cell.strip().lower() for cell in header]
        canonical = {}
        for target, aliases in (
            ("image", IMAGE_COLUMNS),
            ("label", records.LABEL_COLUMNS),
            ("text", _TEXT_COLUMNS),
        ):
            at = records.column_of(names, aliases)
            if at is not None:
                canonical[at] = target
        return [canonical.get(i, name) for i, name in enumerate(names)]

    @staticmethod
    def _header_problem(header: list[str], names: list[str]) -> DataError | None:
        shown = ", ".join(header)
        if "image" not in names and "text" not in names:
            return DataError(
                f"the header ({shown}) has no image column (allowed names: "
                f"{', '.join(IMAGE_COLUMNS)}) and no text column (allowed names: "
                f"{', '.join(_TEXT_COLUMNS)})"
            )
        if "label" not in names:
            return DataError(
                f"the header ({shown}) has no label column (allowed names: "
                f"{', '.join(records.LABEL_COLUMNS)})"
            )
        return None

    def to_example(self, record: Any) -> dict:
        if isinstance(record, dict) and "image" not in record:
            raise DataError(
                f"the header ({', '.join(k for k in record if k != SOURCE_KEY)}) has no image "
                f"column (allowed names: {', '.join(IMAGE_COLUMNS)})"
            )
        return image_example(record)


@hookimpl
def register_dataset_formats(register):
    register("image-folder", ImageFolderFormat())
    register("image-label", ImageLabelFormat())
    register("image-csv", ImageCsvFormat())


__all__ = [
    "ImageFolderFormat",
    "ImageLabelFormat",
    "ImageCsvFormat",
    "image_example",
    "register_dataset_formats",
]
