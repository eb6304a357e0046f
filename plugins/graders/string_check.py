"""``string_check``: compare ``input`` with ``reference`` (``eq``, ``ne``, ``like``: contains,
``ilike``: contains ignoring case). Grades 1 or 0."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunewright import ConfigError

from .templates import check, name_of, render, require

OPERATIONS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.lower() in a.lower(),
}


@dataclass
class StringCheck:
    name: str
    input: str
    reference: str
    operation: str

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        text, reference = render(self.input, sample, item), render(self.reference, sample, item)
        return 1.0 if OPERATIONS[self.operation](text, reference) else 0.0


def string_check(spec: Mapping[str, Any], build: Any = None) -> StringCheck:
    name = name_of(spec)
    operation = require(spec, "operation", "string_check")
    if operation not in OPERATIONS:
        raise ConfigError(
            f"string_check grader {name!r}: operation {operation!r} is not one of "
            f"{', '.join(OPERATIONS)}"
        )
    for key in ("input", "reference"):
        check(require(spec, key, "string_check"), f"string_check grader {name!r}: {key}")
    return StringCheck(name, spec["input"], spec["reference"], operation)
