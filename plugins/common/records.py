"""Reading data files: lines of UTF-8, JSON Lines or a JSON array, CSV/TSV rows, CSV labels."""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunewright import DataError

#: label column names a CSV header may use; the first one present wins
LABEL_COLUMNS = ("label", "category", "class")

INTEGER = re.compile(r"[+-]?\d+")
DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def type_name(value: Any) -> str:
    """How a message names a JSON value's type: ``an object``, ``a number``, ``null``..."""
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def decoded_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """Yield ``(line_number, text)`` for each line, or a :class:`DataError` for a line that is
    not UTF-8, so that a single stray byte costs one line, not the file."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    DataError(
                        f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8 "
                        "(save the file as UTF-8)"
                    ),
                )


def json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """JSON Lines (one value per line; blank lines are skipped) or, when the file starts with
    ``[``, one JSON array whose elements are numbered by the line they start on. A line that
    cannot be read is yielded as a :class:`DataError`."""
    lines = list(decoded_lines(Path(path)))
    first = next((text for _, text in lines if isinstance(text, str) and text.strip()), "")
    if first.lstrip().startswith("[") and not any(isinstance(t, DataError) for _, t in lines):
        yield from _array("".join(text for _, text in lines))
        return
    for number, text in lines:
        if isinstance(text, DataError):
            yield number, text
            continue
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                number,
                DataError(
                    f"not valid JSON: {exc.msg} at column {exc.colno} "
                    "(each line must be one complete JSON object)"
                ),
            )


def _array(text: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")
    index = whitespace.match(text, text.index("[") + 1).end()
    if text.startswith("]", index):
        return
    while True:
        line = text.count("\n", 0, index) + 1
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as exc:
            yield (
                exc.lineno,
                DataError(
                    f"not valid JSON: {exc.msg} at column {exc.colno} (the file is a JSON array; "
                    "its elements must be JSON objects separated by commas)"
                ),
            )
            return
        yield line, value
        index = whitespace.match(text, index).end()
        if text.startswith(",", index):
            index = whitespace.match(text, index + 1).end()
        elif text.startswith("]", index):
            return
        else:
            yield (
                text.count("\n", 0, index) + 1,
                DataError("not valid JSON: expected ',' or ']' after an element of the array"),
            )
            return


def csv_rows(path: Path) -> Iterator[tuple[int, list[str] | DataError]]:
    """The rows of a CSV file (tab-separated for ``.tsv``) that hold anything, each with the line
    it starts on; the first is the header. A row with a line that is not UTF-8, or (after the
    header) with another number of fields than the header, is yielded as a :class:`DataError`."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    bad: dict[int, DataError] = {}

    def lines() -> Iterator[str]:
        for number, text in decoded_lines(path):
            if isinstance(text, DataError):
                bad[number] = text
                yield "\n"  # keeps the csv module's line count in step with the file
            else:
                yield text

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
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
            header = row
        elif len(row) != len(header):
            yield (
                start,
                DataError(
                    f"{len(row)} fields, but the header has {len(header)} ({', '.join(header)}); quote a "
                    f"field that holds a {'tab' if delimiter == chr(9) else 'comma'}"
                ),
            )
            continue
        yield start, row


def column_of(names: list[str], aliases: tuple[str, ...]) -> int | None:
    """Where the first of ``aliases`` stands among a header's lowercased ``names``."""
    return next((names.index(alias) for alias in aliases if alias in names), None)


def parse_label(value: str) -> Any:
    """A CSV cell or folder name as a label: whole numbers become ``int``, other numbers
    ``float``, the rest stays text (stripped)."""
    value = value.strip()
    if INTEGER.fullmatch(value):
        return int(value)
    if DECIMAL.fullmatch(value):
        return float(value)
    return value


__all__ = [
    "LABEL_COLUMNS",
    "INTEGER",
    "DECIMAL",
    "type_name",
    "decoded_lines",
    "json_records",
    "csv_rows",
    "column_of",
    "parse_label",
]
