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

import codecs
import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from tunewright import DataError, hookimpl
from tunewright.vision import DETAILS, SOURCE_KEY

IMAGE_TASK = "image-classification"
IMAGE_COLUMNS = ("image", "image_path", "path", "file")
LABEL_COLUMNS = ("label", "category", "class")
# The built-in text csv format's column names: a text CSV read by this reader first (both read
# .csv) must still be recognised by that format, whose detect() looks for "text" and "label".
_TEXT_COLUMNS = ("text", "sentence")
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _source(path: Path) -> dict:
    return {"root": os.path.abspath(path)}


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def image_example(record: Any) -> dict:
    """``{"image", "label", "detail"?, "image_source"?}`` from a record, or :class:`DataError`."""
    if not isinstance(record, dict):
        raise DataError(f'expected an object {{"image": ..., "label": ...}}, got {_type_name(record)}')
    missing = [key for key in ("image", "label") if key not in record]
    if missing:
        found = ", ".join(k for k in record if k != SOURCE_KEY) or "no keys"
        raise DataError(f"no {' or '.join(repr(k) for k in missing)} key (found: {found}; expected "
                        '{"image": "cats/1.png", "label": "cat"})')
    image, label = record["image"], record["label"]
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"'image' must be a path, a data URL or an http(s) URL, got {_type_name(image)}")
    if isinstance(label, bool) or not isinstance(label, (str, int, float)) or (
            isinstance(label, str) and not label.strip()):
        raise DataError(f"'label' must be a class name or a whole number, got {_type_name(label)}"
                        + (" (empty)" if isinstance(label, str) else ""))
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


def _parse_label(value: str) -> Any:
    value = value.strip()
    if _INTEGER.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    return value


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
                yield number, DataError(f"{entry.name} is a file outside any class folder (expected "
                                        f"{path}/<label>/<image>; move it into the folder of its class)")
                continue
            label = _parse_label(entry.name) if _INTEGER.fullmatch(entry.name) else entry.name
            for item in sorted(entry.iterdir(), key=lambda p: p.name):
                if item.name.startswith("."):
                    continue
                number += 1
                reference = f"{entry.name}/{item.name}"
                if item.is_dir():
                    yield number, DataError(f"{reference} is a folder inside class folder {entry.name} "
                                            f"(expected images directly in {path}/<label>/)")
                    continue
                yield number, {"image": reference, "label": label, SOURCE_KEY: source}

    def to_example(self, record: Any) -> dict:
        return image_example(record)


# ---------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, DataError(f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not "
                                        "UTF-8 (save the file as UTF-8)")


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
        path = Path(path)
        source = _source(path.parent)
        lines = list(_decoded_lines(path))
        first = next((t for _, t in lines if isinstance(t, str) and t.strip()), "")
        if first.lstrip().startswith("[") and not any(isinstance(t, DataError) for _, t in lines):
            records = self._array("".join(t for _, t in lines))
        else:
            records = self._lines(lines)
        for number, record in records:
            if isinstance(record, dict):
                record = {**record, SOURCE_KEY: source}
            yield number, record

    @staticmethod
    def _lines(lines: list) -> Iterator[tuple[int, Any]]:
        for number, text in lines:
            if isinstance(text, DataError):
                yield number, text
            elif text.strip():
                try:
                    yield number, json.loads(text)
                except json.JSONDecodeError as exc:
                    yield number, DataError(f"not valid JSON: {exc.msg} at column {exc.colno} (each "
                                            "line must be one complete JSON object)")

    @staticmethod
    def _array(text: str) -> Iterator[tuple[int, Any]]:
        decoder = json.JSONDecoder()
        space = re.compile(r"\s*")
        index = space.match(text, text.index("[") + 1).end()
        while index < len(text) and not text.startswith("]", index):
            line = text.count("\n", 0, index) + 1
            try:
                value, index = decoder.raw_decode(text, index)
            except json.JSONDecodeError as exc:
                yield exc.lineno, DataError(f"not valid JSON: {exc.msg} at column {exc.colno} (the file "
                                            "is a JSON array of objects separated by commas)")
                return
            yield line, value
            index = space.match(text, index).end()
            if text.startswith(",", index):
                index = space.match(text, index + 1).end()

    def to_example(self, record: Any) -> dict:
        return image_example(record)


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


class ImageCsvFormat:
    """CSV/TSV with an image column and a label column (``image,label``)."""

    name = "image-csv"
    description = ("CSV/TSV with a header naming an image column (image, image_path, path, file) "
                   "and a label column (label, category, class)")
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
        path = Path(path)
        source = _source(path.parent)
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        bad: dict[int, DataError] = {}

        def lines() -> Iterator[str]:
            for number, text in _decoded_lines(path):
                if isinstance(text, DataError):
                    bad[number] = text
                    yield "\n"  # keeps the csv module's line count in step with the file
                else:
                    yield text

        reader = csv.reader(lines(), delimiter=delimiter)
        header: list[str] | None = None
        names: list[str] = []
        end = 0
        for row in reader:
            start, end = end + 1, reader.line_num
            errors = [bad[n] for n in range(start, end + 1) if n in bad]
            if errors:
                yield start, errors[0]
                continue
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header, names = row, self._names(row)
                problem = self._header_problem(header, names)
                if problem is not None:
                    yield start, problem
                    return
                continue
            if len(row) != len(header):
                yield start, DataError(f"{len(row)} fields, but the header has {len(header)} "
                                       f"({', '.join(header)}); quote a field that holds a "
                                       f"{'tab' if delimiter == chr(9) else 'comma'}")
                continue
            record: dict[str, Any] = {}
            for name, cell in zip(names, row):
                record.setdefault(name, _parse_label(cell) if name == "label" else cell.strip())
            if "image" in record:
                record[SOURCE_KEY] = source
            yield start, record

    @staticmethod
    def _names(header: list[str]) -> list[str]:
        names = [cell.strip().lower() for cell in header]
        canonical = {}
        for target, aliases in (("image", IMAGE_COLUMNS), ("label", LABEL_COLUMNS), ("text", _TEXT_COLUMNS)):
            at = next((names.index(alias) for alias in aliases if alias in names), None)
            if at is not None:
                canonical[at] = target
        return [canonical.get(i, name) for i, name in enumerate(names)]

    @staticmethod
    def _header_problem(header: list[str], names: list[str]) -> DataError | None:
        shown = ", ".join(header)
        if "image" not in names and "text" not in names:
            return DataError(f"the header ({shown}) has no image column (allowed names: "
                             f"{', '.join(IMAGE_COLUMNS)}) and no text column (allowed names: "
                             f"{', '.join(_TEXT_COLUMNS)})")
        if "label" not in names:
            return DataError(f"the header ({shown}) has no label column (allowed names: "
                             f"{', '.join(LABEL_COLUMNS)})")
        return None

    def to_example(self, record: Any) -> dict:
        if isinstance(record, dict) and "image" not in record:
            raise DataError(f"the header ({', '.join(k for k in record if k != SOURCE_KEY)}) has no image "
                            f"column (allowed names: {', '.join(IMAGE_COLUMNS)})")
        return image_example(record)


@hookimpl
def register_dataset_formats(register):
    register("image-folder", ImageFolderFormat())
    register("image-label", ImageLabelFormat())
    register("image-csv", ImageCsvFormat())


__all__ = ["ImageFolderFormat", "ImageLabelFormat", "ImageCsvFormat", "image_example",
           "register_dataset_formats"]
