"""``score_model``: a model judges the answer. ``model`` is a tuned run directory or a bundle
(answered through its edge runtime, without torch); ``input`` the templated chat messages of the
rubric; ``range`` (default ``[0, 1]``) the scale it is asked for; ``sampling_params.
max_completions_tokens`` bounds its answer (default 32).

The judge is asked for ``{"result": <number>}``; a bare number in its answer is read as well. The
result is clipped to ``range``; an answer with no number is that example's error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunewright import ConfigError

from .templates import check, name_of, render, require

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def read_result(text: str) -> float:
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            found = json.loads(match.group(0))
            if isinstance(found, dict) and isinstance(found.get("result"), (int, float)):
                return float(found["result"])
        except json.JSONDecodeError:
            pass
    number = NUMBER.search(text)
    if number is None:
        raise ValueError(f"the judge's answer holds no number: {text[:120]!r}")
    return float(number.group(0))


@dataclass
class ScoreModel:
    name: str
    model: str
    messages: list[dict]
    low: float
    high: float
    max_tokens: int
    sampler: Any = field(default=None, repr=False)
    pm: Any = field(default=None, repr=False)

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        if self.sampler is None:
            from tunewright import get_plugin_manager, open_sampler

            self.sampler = open_sampler(
                self.model, self.pm or get_plugin_manager(), max_new_tokens=self.max_tokens
            )
        messages = [
            {"role": m.get("role", "user"), "content": render(m.get("content", ""), sample, item)}
            for m in self.messages
        ]
        return min(self.high, max(self.low, read_result(self.sampler(messages))))


def score_model(spec: Mapping[str, Any], build: Any = None) -> ScoreModel:
    name = name_of(spec)
    model = str(require(spec, "model", "score_model"))
    messages = require(spec, "input", "score_model")
    if not isinstance(messages, list) or not all(
        isinstance(m, Mapping) and "content" in m for m in messages
    ):
        raise ConfigError(
            f"score_model grader {name!r}: input is a list of messages with role and content"
        )
    for number, message in enumerate(messages):
        check(message["content"], f"score_model grader {name!r}: input[{number}]")
    low, high = spec.get("range", [0, 1])
    if not float(low) < float(high):
        raise ConfigError(f"score_model grader {name!r}: range [{low}, {high}] is empty")
    params = spec.get("sampling_params") or {}
    return ScoreModel(
        name,
        model,
        [dict(m) for m in messages],
        float(low),
        float(high),
        int(params.get("max_completions_tokens", 32)),
    )
