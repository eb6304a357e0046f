"""Checking examples before anything trains.

Per example: the task's own ``validate`` and every ``validate_example`` hook implementation (the
problems of all are collected). Per file: exact duplicates (a warning naming both lines), how many
examples there are, and the task's ``check_split`` (labels the training data never saw...). Per
tokenized example: its length against ``data.max_length``, as the task counts it.

Every problem is a :class:`tunewright.Problem` located ``file:line``; :func:`sort_problems` orders
them by file, then line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import DataError, PluginError
from ..types import Problem, Task, optional

#: fewer training examples than this is an error, fewer than RECOMMENDED_EXAMPLES a warning
MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 50


def check_examples(
    examples: Sequence[dict],
    locations: Sequence[str],
    task_name: str,
    pm: Any,
    config: Any = None,
    *,
    split: str = "train",
    reference_labels: Sequence[str] | None = None,
    source: str | None = None,
) -> list[Problem]:
    """Check the examples of one file; return every problem, errors, warnings and exclusions, in
    file order.

    ``split`` names the data (``"train"``, ``"validation"``, ``"test"`` or ``"evaluation"``):
    training data needs at least 10 examples (an error) and should have 50 (a warning); fewer
    than 10 evaluation examples only warn. ``reference_labels`` are the training labels, which
    the task compares held-out labels with.
    """
    task = pm.registries.get("tasks", task_name, key="task")
    examples, locations = list(examples), list(locations)
    source = source or _source(locations)
    problems = validate_examples(examples, locations, task, task_name, pm, config)
    problems += _duplicates(examples, locations)
    check_split = optional(task, Task, "check_split")
    if check_split is not None:
        problems += _call_task(
            pm,
            task_name,
            "check_split",
            source,
            check_split,
            examples,
            locations,
            split=split,
            reference_labels=reference_labels,
        )
    # the file's size decides whether it is too small (a broken example has an error of its own);
    # what the message counts as usable is what no problem refuses
    count = len(examples)
    refused = {p.location for p in problems if p.severity in ("error", "excluded")}
    usable = sum(location not in refused for location in locations)
    of = f" of {count}" if usable != count else ""
    if split == "train":
        if count < MIN_EXAMPLES:
            problems.append(
                Problem(
                    source,
                    (
                        f"{usable} usable example{'s' if usable != 1 else ''}{of}; at least {MIN_EXAMPLES} are "
                        f"needed to train and evaluate ({RECOMMENDED_EXAMPLES} or more recommended)"
                    ),
                )
            )
        elif count < RECOMMENDED_EXAMPLES:
            problems.append(
                Problem(
                    source,
                    (
                        f"only {count} examples; {RECOMMENDED_EXAMPLES} or more are recommended for a "
                        "result that generalises"
                    ),
                    "warning",
                )
            )
    elif 0 < count < MIN_EXAMPLES:
        problems.append(
            Problem(
                source,
                (f"only {count} {split} examples; metrics on fewer than {MIN_EXAMPLES} say little"),
                "warning",
            )
        )
    return sort_problems(problems)


def validate_examples(
    examples: Sequence[Any],
    locations: Sequence[str],
    task: Any,
    task_name: str,
    pm: Any,
    config: Any = None,
) -> list[Problem]:
    """The task's ``validate`` and every ``validate_example`` implementation, for each example (as
    read from a user's file: anything JSON holds, not only objects)."""
    impls = hookimpls(pm, "validate_example")
    found: list[Problem] = []
    for example, location in zip(examples, locations):
        if not isinstance(example, dict):
            found.append(
                Problem(location, f"expected an example object, got {type(example).__name__}")
            )
            continue
        result = _call_task(
            pm, task_name, "validate", location, task.validate, example, location, config
        )
        found += _problems(result, location)
        for impl in impls:
            try:
                result = call_impl(
                    pm,
                    impl,
                    "validate_example",
                    location,
                    example=example,
                    task=task_name,
                    config=config,
                    location=location,
                )
            except DataError as exc:
                result = [Problem(location, str(exc))]
            found += _problems(result, location)
    return found


def _problems(result: Any, location: str) -> list[Problem]:
    if not result:
        return []
    items = result if isinstance(result, (list, tuple)) else [result]
    return [item if isinstance(item, Problem) else Problem(location, str(item)) for item in items]


def _call_task(
    pm: Any, task_name: str, what: str, where: str, function, *args, **kwargs
) -> list[Problem]:
    try:
        return _problems(function(*args, **kwargs), where)
    except DataError as exc:
        return [Problem(where, str(exc))]
    except Exception as exc:  # a bug in the task, not in the data
        raise PluginError(
            f"task {task_name!r} ({describe_plugin(pm, _task_owner(pm, task_name))}) "
            f"failed in {what} at {where}: {type(exc).__name__}: {exc}"
        ) from exc


def check_lengths(
    features: Sequence[dict | None],
    locations: Sequence[str],
    task: Any,
    max_length: int | None,
    *,
    limit: str = "data.max_length",
) -> tuple[list[Problem], list[int | None]]:
    """Every tokenized example longer than ``max_length`` (an error naming ``limit``), and the
    length of each (``None`` where the task counts none or the example was not tokenized)."""
    counter = optional(task, Task, "num_tokens")
    lengths: list[int | None] = []
    problems = []
    for feature, location in zip(features, locations):
        if feature is None:
            lengths.append(None)
            continue
        if counter is not None:
            n = counter(feature)
        else:
            ids = feature.get("input_ids") if isinstance(feature, dict) else None
            n = len(ids) if ids is not None else None
        lengths.append(n)
        if n is not None and max_length and n > max_length:
            problems.append(
                Problem(
                    location,
                    (
                        f"{n} tokens, longer than {limit} {max_length} (shorten or split the example"
                        + (", or raise data.max_length)" if limit == "data.max_length" else ")")
                    ),
                )
            )
    return problems, lengths


# ---------------------------------------------------------------------------------------------
# Hooks called one implementation at a time, so that an error names its plugin
# ---------------------------------------------------------------------------------------------


def hookimpls(pm: Any, hook_name: str) -> list:
    """The implementations of a hook in pluggy's call order (tryfirst first, trylast last).
    Wrappers are left out: these hooks are called one implementation at a time so that an
    error can name its plugin."""
    hook = getattr(pm.hook, hook_name)
    return [
        impl for impl in reversed(hook.get_hookimpls()) if not (impl.hookwrapper or impl.wrapper)
    ]


def describe_plugin(pm: Any, plugin_name: str | None) -> str:
    info = pm.infos.get(plugin_name) if plugin_name else None
    return info.describe() if info is not None else f"plugin {plugin_name!r}"


def _task_owner(pm: Any, task_name: str) -> str | None:
    try:
        return pm.registries.owner("tasks", task_name)
    except KeyError:
        return None


def call_impl(pm: Any, impl: Any, hook_name: str, where: str, **kwargs) -> Any:
    """Call one hook implementation with the arguments it names (as pluggy does); a
    :class:`tunewright.DataError` passes through, anything else names the plugin."""
    try:
        return impl.function(*[kwargs[name] for name in impl.argnames])
    except DataError:
        raise
    except Exception as exc:
        raise PluginError(
            f"{describe_plugin(pm, impl.plugin_name)} failed in {hook_name} at {where}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Duplicates and ordering
# ---------------------------------------------------------------------------------------------


def example_key(example: Any) -> str:
    """Two examples with the same key are the same example."""
    return json.dumps(example, sort_keys=True, ensure_ascii=False, default=repr)


def _duplicates(examples: list, locations: list[str]) -> list[Problem]:
    first: dict[str, str] = {}
    problems = []
    for example, location in zip(examples, locations):
        key = example_key(example)
        if key in first:
            problems.append(
                Problem(
                    location,
                    (
                        f"the same example as {first[key]} (an exact duplicate counts twice; remove one)"
                    ),
                    "warning",
                )
            )
        else:
            first[key] = location
    return problems


def leaks(
    examples: Sequence[dict],
    locations: Sequence[str],
    train_examples: Sequence[dict],
    train_locations: Sequence[str],
    split: str,
) -> list[Problem]:
    """Held-out examples that also occur in the training data (a warning each)."""
    seen: dict[str, str] = {}
    for example, location in zip(train_examples, train_locations):
        seen.setdefault(example_key(example), location)
    return [
        Problem(
            location,
            (
                f"the same example as {seen[example_key(example)]} in the training data (a {split} score "
                "on examples the model trained on says little)"
            ),
            "warning",
        )
        for example, location in zip(examples, locations)
        if example_key(example) in seen
    ]


def parse_location(location: str) -> tuple[str, int]:
    """``("data/train.jsonl", 17)`` for ``"data/train.jsonl:17"``; line 0 for a file or a key."""
    path, _, line = location.rpartition(":")
    if path and line.isdigit():
        return path, int(line)
    return location, 0


def sort_problems(problems: Iterable[Problem], sources: Sequence[str] = ()) -> list[Problem]:
    """Problems grouped by file (``sources`` first, in that order, then in order of first
    appearance), then by line; a file's own problems (no line) come before its lines'."""
    problems = list(problems)
    order: dict[str, int] = {source: i for i, source in enumerate(sources)}
    for problem in problems:
        order.setdefault(parse_location(problem.location)[0], len(order))
    return sorted(
        problems,
        key=lambda p: (order[parse_location(p.location)[0]], parse_location(p.location)[1]),
    )


def _source(locations: Sequence[str]) -> str:
    return parse_location(locations[0])[0] if locations else "data"


__all__ = [
    "check_examples",
    "validate_examples",
    "check_lengths",
    "leaks",
    "sort_problems",
    "parse_location",
    "example_key",
    "hookimpls",
    "call_impl",
    "describe_plugin",
    "MIN_EXAMPLES",
    "RECOMMENDED_EXAMPLES",
]
