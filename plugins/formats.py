"""Built-in dataset formats: files of chat and classification examples.

Every format turns one record of a file into one of the two canonical examples::

    chat            {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}
    classification  {"text": str, "label": str | int | float}   (a fractional label: regression)

=================  ==================  =====================================================
format             files               one record, and how ``format: auto`` recognises it
=================  ==================  =====================================================
chat               .jsonl .json        ``{"messages": [...]}`` as OpenAI's fine-tuning API
                                       takes it: has the key ``messages``
prompt-completion  .jsonl .json        ``{"prompt": str, "completion": str}``, or TRL's
                                       conversational form where both are message lists:
                                       has the keys ``prompt`` and ``completion``
instruction        .jsonl .json        ``{"text": "### Human: ... ### Assistant: ..."}``, one or
                                       more turns: has ``text`` holding a ``### Human:`` or
                                       ``### Assistant:`` marker, and no ``label``
text-label         .jsonl .json        ``{"text": str, "label": str | int | float}``: has the
                                       keys ``text`` and ``label``
csv                .csv .tsv           a header row naming a text column (``text`` or
                                       ``sentence``) and a label column (``label``,
                                       ``category`` or ``class``), case-insensitive; ``.tsv``
                                       is tab-separated. Labels that read as whole numbers
                                       become ``int``, other numbers ``float``, the rest ``str``
=================  ==================  =====================================================

A ``.json`` file may hold JSON Lines or one JSON array of records. Auto-detection (in
:func:`tunewright.data.read_examples`) takes the formats that read the file's suffix and asks
each one's ``detect(record)`` about the first record that one of them recognises; a later line
that another format would recognise is reported as a mixed file, line by line.

A format only reads: whether an example is good for training is its task's to say
(``Task.validate``). ``task_for`` names the task a file's examples are for when the user names
none (``tunewright validate data.jsonl``): chat data with image parts is for ``image-to-text``.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator

from tunewright import DataError, hookimpl

ROLES = ("system", "user", "assistant")
ALLOWED_ROLES = ", ".join(ROLES)

# Column names a CSV header may use; the first one present wins. Kept short on purpose: a guess
# at a column the user did not mean would train on the wrong thing silently.
TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMNS = ("label", "category", "class")

_INSTRUCTION_MARKER = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """Yield ``(line_number, text)`` for each line, or a :class:`DataError` for a line that is
    not UTF-8, so that a single stray byte costs one line, not the file."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, DataError(
                    f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8 "
                    "(save the file as UTF-8)")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _found(record: dict) -> str:
    return f"found: {', '.join(map(str, record)) or 'no keys'}"


def _object(record: Any, expected: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object {expected}, got {_type_name(record)}")
    return record


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


class JsonRecords:
    """Reads JSON Lines (one object per line; blank lines are skipped) or, when the file starts
    with ``[``, one JSON array whose elements are numbered by the line they start on."""

    suffixes: tuple[str, ...] = (".jsonl", ".json", ".ndjson")

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        lines = list(_decoded_lines(Path(path)))
        first = next((text for _, text in lines if isinstance(text, str) and text.strip()), "")
        if first.lstrip().startswith("[") and not any(isinstance(t, DataError) for _, t in lines):
            yield from self._read_array("".join(text for _, text in lines))
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
                yield number, DataError(
                    f"not valid JSON: {exc.msg} at column {exc.colno} "
                    "(each line must be one complete JSON object)")

    @staticmethod
    def _read_array(text: str) -> Iterator[tuple[int, Any]]:
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
                yield exc.lineno, DataError(
                    f"not valid JSON: {exc.msg} at column {exc.colno} (the file is a JSON array; "
                    "its elements must be JSON objects separated by commas)")
                return
            yield line, value
            index = whitespace.match(text, index).end()
            if text.startswith(",", index):
                index = whitespace.match(text, index + 1).end()
            elif text.startswith("]", index):
                return
            else:
                yield text.count("\n", 0, index) + 1, DataError(
                    "not valid JSON: expected ',' or ']' after an element of the array")
                return


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def _message(value: Any, number: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(
            f"message {number}: expected an object with role and content, got {_type_name(value)}")
    if "role" not in value:
        raise DataError(f"message {number}: no 'role' (allowed: {ALLOWED_ROLES})")
    if "content" not in value:
        raise DataError(f"message {number} ({value['role']}): no 'content' (expected text)")
    content = value["content"]
    # A list of content parts is OpenAI's multimodal form; image parts are checked by the vision
    # plugin's validate_example, text parts like plain content.
    if not isinstance(content, (str, list)):
        raise DataError(
            f"message {number} ({value['role']}): content must be text (or a list of content "
            f"parts), got {_type_name(content)}")
    return dict(value)


def _messages(value: Any, key: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"'{key}' must be a list of messages, got {_type_name(value)}")
    return [_message(item, number) for number, item in enumerate(value, start=1)]


def _chat_task(examples: list[dict]) -> str:
    """``image-to-text`` when a message carries an image part, else ``chat``."""
    for example in examples:
        for message in example.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") != "text" for p in content):
                return "image-to-text"
    return "chat"


class ChatFormat(JsonRecords):
    name = "chat"
    description = 'JSONL {"messages": [{"role", "content"}, ...]} (OpenAI fine-tuning format)'

    def task_for(self, examples: list[dict]) -> str:
        return _chat_task(examples)

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "messages" in record

    def to_example(self, record: Any) -> dict:
        record = _object(record, 'with "messages"')
        if "messages" not in record:
            raise DataError(f"no 'messages' key ({_found(record)}; "
                            'expected {"messages": [{"role": ..., "content": ...}, ...]})')
        # Other top-level keys travel along for plugins that understand them.
        return {**record, "messages": _messages(record["messages"], "messages")}


class PromptCompletionFormat(JsonRecords):
    name = "prompt-completion"
    description = 'JSONL {"prompt", "completion"} -> a user and an assistant message'

    def task_for(self, examples: list[dict]) -> str:
        return _chat_task(examples)

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "prompt" in record and "completion" in record

    def to_example(self, record: Any) -> dict:
        record = _object(record, 'with "prompt" and "completion"')
        missing = [key for key in ("prompt", "completion") if key not in record]
        if missing:
            raise DataError(f"no {' or '.join(repr(k) for k in missing)} key ({_found(record)}; "
                            'expected {"prompt": str, "completion": str})')
        return {"messages": self._turn(record["prompt"], "prompt", "user")
                + self._turn(record["completion"], "completion", "assistant")}

    @staticmethod
    def _turn(value: Any, key: str, role: str) -> list[dict]:
        if isinstance(value, str):
            return [{"role": role, "content": value}]
        if isinstance(value, list):  # TRL's conversational prompt-completion
            return _messages(value, key)
        raise DataError(f"'{key}' must be a string (or a list of messages), got {_type_name(value)}")


class InstructionFormat(JsonRecords):
    name = "instruction"
    description = 'JSONL {"text": "### Human: ... ### Assistant: ..."}, one or more turns'

    def task_for(self, examples: list[dict]) -> str:
        return _chat_task(examples)

    def detect(self, record: Any) -> bool:
        return (isinstance(record, dict) and "label" not in record
                and isinstance(record.get("text"), str)
                and _INSTRUCTION_MARKER.search(record["text"]) is not None)

    def to_example(self, record: Any) -> dict:
        record = _object(record, 'with "text"')
        text = record.get("text")
        if not isinstance(text, str):
            raise DataError(f"'text' must be a string, got {_type_name(text)} "
                            '(expected {"text": "### Human: ... ### Assistant: ..."})')
        markers = list(_INSTRUCTION_MARKER.finditer(text))
        if not markers:
            raise DataError("no '### Human:' or '### Assistant:' marker in the text "
                            "(expected '### Human: question ### Assistant: answer')")
        messages = []
        # Text before the first marker is an instruction to the model: a system message.
        if text[: markers[0].start()].strip():
            messages.append({"role": "system", "content": text[: markers[0].start()].strip()})
        for marker, following in zip(markers, markers[1:] + [None]):
            end = following.start() if following else len(text)
            role = "user" if marker.group(1).lower() == "human" else "assistant"
            messages.append({"role": role, "content": text[marker.end():end].strip()})
        return {"messages": messages}


def _check_label(label: Any) -> Any:
    if isinstance(label, bool) or not isinstance(label, (str, int, float, type(None))):
        raise DataError(f"'label' must be a string or a number, got {_type_name(label)}")
    return label


class TextLabelFormat(JsonRecords):
    name = "text-label"
    description = 'JSONL {"text", "label"} for classification (a fractional label: regression)'

    def task_for(self, examples: list[dict]) -> str:
        return "classification"

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "text" in record and "label" in record

    def to_example(self, record: Any) -> dict:
        record = _object(record, 'with "text" and "label"')
        missing = [key for key in ("text", "label") if key not in record]
        if missing:
            raise DataError(f"no {' or '.join(repr(k) for k in missing)} key ({_found(record)}; "
                            'expected {"text": str, "label": str or number})')
        if not isinstance(record["text"], str):
            raise DataError(f"'text' must be a string, got {_type_name(record['text'])}")
        return {"text": record["text"], "label": _check_label(record["label"])}


def _parse_label(value: str) -> Any:
    value = value.strip()
    if not value:
        return None
    if _INTEGER.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    return value


class CsvFormat:
    name = "csv"
    description = ("CSV/TSV with a header naming a text column (text, sentence) and a label "
                   "column (label, category, class)")
    suffixes = (".csv", ".tsv")

    def task_for(self, examples: list[dict]) -> str:
        return "classification"

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "text" in record and "label" in record

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        path = Path(path)
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
        columns: tuple[int, int] | None = None
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
                columns = self._columns(header)
                if isinstance(columns, DataError):
                    yield start, columns
                    return
                continue
            if len(row) != len(header):
                yield start, DataError(
                    f"{len(row)} fields, but the header has {len(header)} "
                    f"({', '.join(header)}); quote a field that holds a "
                    f"{'tab' if delimiter == chr(9) else 'comma'}")
                continue
            text_at, label_at = columns
            yield start, {"text": row[text_at], "label": _parse_label(row[label_at])}

    @staticmethod
    def _columns(header: list[str]) -> tuple[int, int] | DataError:
        names = [cell.strip().lower() for cell in header]
        found = []
        for what, aliases in (("text", TEXT_COLUMNS), ("label", LABEL_COLUMNS)):
            at = next((names.index(alias) for alias in aliases if alias in names), None)
            if at is None:
                return DataError(
                    f"the header ({', '.join(header)}) has no {what} column "
                    f"(allowed names: {', '.join(aliases)})")
            found.append(at)
        return found[0], found[1]

    def to_example(self, record: Any) -> dict:
        return TextLabelFormat().to_example(record)


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("chat", ChatFormat())
    register("prompt-completion", PromptCompletionFormat())
    register("instruction", InstructionFormat())
    register("text-label", TextLabelFormat())
    register("csv", CsvFormat())
