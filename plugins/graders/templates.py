"""``{{sample.output_text}}``, ``{{ item.answer }}``, ``{{item.choices[0].label}}``: a template
names a path into the sample or the item; a value that is not a string is written as JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tunewright import ConfigError

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]")


def parse(path: str, where: str) -> list[str | int]:
    steps: list[str | int] = []
    position = 0
    while position < len(path):
        match = STEP.match(path, position)
        if match is None:
            raise ConfigError(f"{where}: cannot read the template path {path!r}")
        steps.append(match.group(1) if match.group(1) else int(match.group(2)))
        position = match.end()
    if not steps or steps[0] not in ("sample", "item"):
        raise ConfigError(f"{where}: a template path starts with sample. or item., not {path!r}")
    return steps


def check(template: Any, where: str) -> None:
    """Refuse a malformed placeholder when the grader is built, not at the first example."""
    if isinstance(template, str):
        for match in PLACEHOLDER.finditer(template):
            parse(match.group(1), where)


def lookup(path: str, sample: Mapping[str, Any], item: Mapping[str, Any]) -> Any:
    steps = parse(path, "template")
    value: Any = {"sample": sample, "item": item}
    for step in steps:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"the template path {path!r} is not in the sample or item") from None
    return value


def render(template: Any, sample: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """The template with every placeholder replaced; a missing path raises ``KeyError`` (that
    example's error)."""
    if not isinstance(template, str):
        return json.dumps(template)

    def value(match: re.Match) -> str:
        found = lookup(match.group(1), sample, item)
        return found if isinstance(found, str) else json.dumps(found)

    return PLACEHOLDER.sub(value, template)


def require(spec: Mapping[str, Any], key: str, kind: str) -> Any:
    if key not in spec:
        raise ConfigError(f"{kind} grader {spec.get('name', '?')!r}: '{key}' is required")
    return spec[key]


def name_of(spec: Mapping[str, Any]) -> str:
    name = spec.get("name", spec.get("type"))
    return str(name)
