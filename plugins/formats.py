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

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunewright import DataError, hookimpl
from tunewright.plugins.common.messages import ALLOWED_ROLES
from tunewright.plugins.common.records import (
    LABEL_COLUMNS,
    column_of,
    csv_rows,
    json_records,
    parse_label,
    type_name,
)

# Column names a CSV header may use; the first one present wins. Kept short on purpose: a guess
# at a column the user did not mean would train on the wrong thing silently.
TEXT_COLUMNS = ("text", "sentence")

_INSTRUCTION_MARKER = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)


def _found(record: dict) -> str:
    return f"found: {', '.join(map(str, record)) or 'no keys'}"


def _object(record: Any, expected: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object {expected}, got {type_name(record)}")
    return record


def _with_keys(record: Any, keys: tuple[str, ...], shape: str) -> dict:
    """``record`` if it is an object with every one of ``keys``; else a :class:`DataError`
    naming the missing ones, what was found and the ``shape`` expected."""
    record = _object(record, "with " + " and ".join(f'"{key}"' for key in keys))
    missing = [key for key in keys if key not in record]
    if missing:
        raise DataError(
            f"no {' or '.join(repr(k) for k in missing)} key ({_found(record)}; expected {shape})"
        )
    return record


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


class JsonRecords:
    """Reads JSON Lines (one object per line; blank lines are skipped) or, when the file starts
    with ``[``, one JSON array whose elements are numbered by the line they start on."""

    suffixes: tuple[str, ...] = (".jsonl", ".json", ".ndjson")

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        return json_records(Path(path))


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def _message(value: Any, number: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(
            f"message {number}: expected an object with role and content, got {type_name(value)}"
        )
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
            f"parts), got {type_name(content)}"
        )
    return dict(value)


def _messages(value: Any, key: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"'{key}' must be a list of messages, got {type_name(value)}")
    return [_message(item, number) for number, item in enumerate(value, start=1)]


class ChatRecords(JsonRecords):
    """JSON records of conversations: for ``image-to-text`` when a message carries an image part,
    else for ``chat``."""

    def task_for(self, examples: list[dict]) -> str:
        for example in examples:
            for message in example.get("messages") or []:
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") != "text" for p in content
                ):
                    return "image-to-text"
        return "chat"


class ChatFormat(ChatRecords):
    name = "chat"
    description = 'JSONL {"messages": [{"role", "content"}, ...]} (OpenAI fine-tuning format)'

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "messages" in record

    def to_example(self, record: Any) -> dict:
        record = _with_keys(
            record, ("messages",), '{"messages": [{"role": ..., "content": ...}, ...]}'
        )
        # Other top-level keys travel along for plugins that understand them.
        return {**record, "messages": _messages(record["messages"], "messages")}


class PromptCompletionFormat(ChatRecords):
    name = "prompt-completion"
    description = 'JSONL {"prompt", "completion"} -> a user and an assistant message'

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "prompt" in record and "completion" in record

    def to_example(self, record: Any) -> dict:
        record = _with_keys(record, ("prompt", "completion"), '{"prompt": str, "completion": str}')
        return {
            "messages": self._turn(record["prompt"], "prompt", "user")
            + self._turn(record["completion"], "completion", "assistant")
        }

    @staticmethod
    def _turn(value: Any, key: str, role: str) -> list[dict]:
        if isinstance(value, str):
            return [{"role": role, "content": value}]
        if isinstance(value, list):  # TRL's conversational prompt-completion
            return _messages(value, key)
        raise DataError(f"'{key}' must be a string (or a list of messages), got {type_name(value)}")


class InstructionFormat(ChatRecords):
    name = "instruction"
    description = 'JSONL {"text": "### Human: ... ### Assistant: ..."}, one or more turns'

    def detect(self, record: Any) -> bool:
        return (
            isinstance(record, dict)
            and "label" not in record
            and isinstance(record.get("text"), str)
            and _INSTRUCTION_MARKER.search(record["text"]) is not None
        )

    def to_example(self, record: Any) -> dict:
        record = _object(record, 'with "text"')
        text = record.get("text")
        if not isinstance(text, str):
            raise DataError(
                f"'text' must be a string, got {type_name(text)} "
                '(expected {"text": "### Human: ... ### Assistant: ..."})'
            )
        markers = list(_INSTRUCTION_MARKER.finditer(text))
        if not markers:
            raise DataError(
                "no '### Human:' or '### Assistant:' marker in the text "
                "(expected '### Human: question ### Assistant: answer')"
            )
        messages = []
        # Text before the first marker is an instruction to the model: a system message.
        if text[: markers[0].start()].strip():
            messages.append({"role": "system", "content": text[: markers[0].start()].strip()})
        for marker, following in zip(markers, [*markers[1:], None]):
            end = following.start() if following else len(text)
            role = "user" if marker.group(1).lower() == "human" else "assistant"
            messages.append({"role": role, "content": text[marker.end() : end].strip()})
        return {"messages": messages}


def _check_label(label: Any) -> Any:
    if isinstance(label, bool) or not isinstance(label, (str, int, float, type(None))):
        raise DataError(f"'label' must be a string or a number, got {type_name(label)}")
    return label


class TextLabelFormat(JsonRecords):
    name = "text-label"
    description = 'JSONL {"text", "label"} for classification (a fractional label: regression)'

    def task_for(self, examples: list[dict]) -> str:
        return "classification"

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "text" in record and "label" in record

    def to_example(self, record: Any) -> dict:
        record = _with_keys(record, ("text", "label"), '{"text": str, "label": str or number}')
        if not isinstance(record["text"], str):
            raise DataError(f"'text' must be a string, got {type_name(record['text'])}")
        return {"text": record["text"], "label": _check_label(record["label"])}


def _parse_label(value: str) -> Any:
    return parse_label(value) if value.strip() else None


class CsvFormat:
    name = "csv"
    description = (
        "CSV/TSV with a header naming a text column (text, sentence) and a label "
        "column (label, category, class)"
    )
    suffixes = (".csv", ".tsv")

    def task_for(self, examples: list[dict]) -> str:
        return "classification"

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "text" in record and "label" in record

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        columns: tuple[int, int] | DataError | None = None
        for number, row in csv_rows(Path(path)):
            if isinstance(row, DataError):
                yield number, row
            elif columns is None:
                columns = self._columns(row)
                if isinstance(columns, DataError):
                    yield number, columns
                    return
            else:
                text_at, label_at = columns
                yield number, {"text": row[text_at], "label": _parse_label(row[label_at])}

    @staticmethod
    def _columns(header: list[str]) -> tuple[int, int] | DataError:
        names = [cell.strip().lower() for cell in header]
        found = []
        for what, aliases in (("text", TEXT_COLUMNS), ("label", LABEL_COLUMNS)):
            at = column_of(names, aliases)
            if at is None:
                return DataError(
                    f"the header ({', '.join(header)}) has no {what} column "
                    f"(allowed names: {', '.join(aliases)})"
                )
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
