"""A sweep's search space: config keys, each with one distribution.

.. code-block:: yaml

    training.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}
    training.max_steps: {int: [20, 80]}
    lora.r: {choice: [4, 8, 16]}

Distributions: ``uniform: [low, high]``, ``log_uniform: [low, high]`` (low > 0), ``int: [low,
high]`` (both ends included), ``log_int: [low, high]`` and ``choice: [a, b, ...]``. The keys are
checked against the config schema (with each end of each range and every choice) before any trial
runs, so that a misspelt key or a value the schema refuses is found at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunewright import ConfigError, load_config
from tunewright import set_key as set_config_key

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")


@dataclass
class Dimension:
    key: str
    kind: str
    values: list[Any]

    @property
    def log(self) -> bool:
        return self.kind.startswith("log_")

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.values)
        low, high = self.values
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, low, high, log=self.log)
        return trial.suggest_float(self.key, low, high, log=self.log)

    def samples(self) -> list[Any]:
        """The values the schema check tries: both ends of a range, every choice."""
        return list(self.values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_space(data: Any, source: str) -> list[Dimension]:
    """Read a space mapping; every problem is a :class:`tunewright.ConfigError` naming the key."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"{source}: expected a mapping of config keys to distributions, e.g. "
            "training.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}"
        )
    dimensions, problems = [], []
    for key, spec in data.items():
        where = f"{source}: {key}"
        if not isinstance(spec, dict) or len(spec) != 1:
            problems.append(
                f"{where}: expected one distribution as a mapping, e.g. {{choice: [4, 8]}} "
                f"(allowed: {', '.join(KINDS)}), got {spec!r}"
            )
            continue
        ((kind, values),) = spec.items()
        if kind not in KINDS:
            problems.append(f"{where}: unknown distribution {kind!r} (allowed: {', '.join(KINDS)})")
            continue
        if kind == "choice":
            if not isinstance(values, list) or not values:
                problems.append(f"{where}: choice needs a non-empty list of values, got {values!r}")
                continue
            dimensions.append(Dimension(str(key), kind, list(values)))
            continue
        integer = kind in ("int", "log_int")
        ok = isinstance(values, list) and len(values) == 2 and all(map(_is_number, values))
        if ok and integer:
            ok = all(isinstance(v, int) for v in values)
        if not ok:
            what = "integers" if integer else "numbers"
            problems.append(f"{where}: {kind} needs [low, high], two {what}, got {values!r}")
            continue
        low, high = values
        if low >= high:
            problems.append(f"{where}: {kind} needs low < high, got [{low}, {high}]")
        elif kind.startswith("log_") and low <= 0:
            problems.append(f"{where}: {kind} needs low > 0, got {low}")
        else:
            dimensions.append(Dimension(str(key), kind, [low, high]))
    if problems:
        raise ConfigError("\n".join(problems))
    return dimensions


def read_space(path: str | Path) -> list[Dimension]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: space file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_space(data, str(path))


def set_key(data: dict, key: str, value: Any, source: str = "space") -> dict:
    """A copy of ``data`` with the dotted ``key`` set to ``value``."""
    return set_config_key(copy.deepcopy(data), key, value, f"{source}: {key}")


def check_space(dimensions: list[Dimension], data: dict, registries: Any, source: str) -> None:
    """Load the config with every key of the space at each of its sample values: an unknown key
    is named with the nearest valid one, a value the schema refuses with what it allows."""
    problems: list[str] = []
    for dimension in dimensions:
        for value in dimension.samples():
            try:
                load_config(set_key(data, dimension.key, value, source), registries, source)
            except ConfigError as exc:
                line = str(exc).splitlines()[0]
                if line not in problems:
                    problems.append(line)
                break
    if problems:
        raise ConfigError("\n".join(problems))
