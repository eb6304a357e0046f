"""One file's way through the data layer, the same for a job, ``tunewright validate`` and
``tunewright eval``::

    read ─► check (task rules, validate_example hooks, duplicates, counts, check_split, leaks)
         ─► transform_example hooks ─► task.tokenize ─► lengths

An example refused by a check (an error or an exclusion) is not tokenized; the result says which
examples are usable, so that what is counted is what would train.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, PluginError
from ..types import Problem
from .checks import call_impl, check_examples, check_lengths, describe_plugin, hookimpls, leaks
from .reading import ReadFile, read_file

#: ``labels=FROM_FILE``: tokenize with the label set of the file's own usable examples
FROM_FILE = object()

REFUSING = ("error", "excluded")


@dataclass
class CheckedFile:
    """One file read, checked, transformed, tokenized and measured.

    ``examples`` are as transformed (as read where not tokenized), ``features`` and ``lengths``
    ``None`` where an example was refused or not tokenized; ``problems`` are every problem of the
    file (unreadable lines, checks, tokenization, lengths); ``labels`` the label set the examples
    were tokenized with."""

    read: ReadFile
    examples: list[dict] = field(default_factory=list)
    features: list[dict | None] = field(default_factory=list)
    lengths: list[int | None] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    labels: list[str] | None = None

    @property
    def locations(self) -> list[str]:
        return self.read.locations

    def usable(self) -> list[bool]:
        """Per example: whether no problem refuses it (no error, no exclusion)."""
        refused = {p.location for p in self.problems if p.severity in REFUSING}
        return [location not in refused for location in self.read.locations]


def transform_example(
    example: dict, location: str, task_name: str, pm: Any, config: Any = None
) -> dict:
    """Run every ``transform_example`` implementation over one example, in pluggy's call order,
    each seeing the previous one's output (``None`` leaves it as it is). A
    :class:`tunewright.DataError` from a transform passes through (the caller reports it at the
    example's location); any other exception is a :class:`tunewright.PluginError` naming the
    plugin."""
    current = example
    for impl in hookimpls(pm, "transform_example"):
        new = call_impl(
            pm,
            impl,
            "transform_example",
            location,
            example=current,
            task=task_name,
            config=config,
            location=location,
        )
        if new is not None:
            current = new
    return current


def tokenize_examples(
    examples: Sequence[dict],
    locations: Sequence[str],
    task: Any,
    task_name: str,
    tokenizer: Any,
    labels: list[str] | None,
    pm: Any,
    config: Any = None,
    skip: Set[str] = frozenset(),
) -> tuple[list[dict | None], list[dict], list[Problem]]:
    """Transform and tokenize each example whose location is not in ``skip``.

    Returns the features (``None`` where skipped or refused), the transformed examples, and the
    problems: a :class:`tunewright.DataError` raised by a transform or by ``task.tokenize`` is a
    problem at the example's location; any other exception names the plugin.
    """
    features: list[dict | None] = []
    transformed: list[dict] = []
    problems: list[Problem] = []
    for example, location in zip(examples, locations):
        feature = None
        if location not in skip:
            try:
                example = transform_example(example, location, task_name, pm, config)
                if tokenizer is not None:
                    feature = task.tokenize(example, tokenizer, labels=labels)
            except DataError as exc:
                problems.append(Problem(location, str(exc)))
            except PluginError:
                raise
            except Exception as exc:
                owner = pm.registries.owner("tasks", task_name)
                raise PluginError(
                    f"task {task_name!r} ({describe_plugin(pm, owner)}) failed to "
                    f"tokenize {location}: {type(exc).__name__}: {exc}"
                ) from exc
        features.append(feature)
        transformed.append(example)
    return features, transformed, problems


def check_file(
    path: str | Path | ReadFile,
    task_name: str,
    pm: Any,
    config: Any = None,
    *,
    data_format: str = "auto",
    split: str = "train",
    reference_labels: Sequence[str] | None = None,
    labels: Any = FROM_FILE,
    tokenizer: Any = None,
    max_length: int | None = None,
    limit: str = "data.max_length",
    train: ReadFile | None = None,
) -> CheckedFile:
    """Read ``path`` (or take a file already read) and run it through the pipeline above.

    ``split`` and ``reference_labels`` are :func:`check_examples`'s; ``train``, the training file
    a held-out file is compared with for leaked examples; ``labels``, the label set to tokenize
    with (default: that of the file's own usable examples); without a ``tokenizer`` examples are
    transformed but not tokenized. A file that cannot be read at all comes back with its
    ``read.fatal`` set and nothing else done.
    """
    read = path if isinstance(path, ReadFile) else read_file(path, pm.registries, data_format)
    if not read.readable:
        return CheckedFile(read, problems=[read.fatal] if read.fatal else [])
    task = pm.registries.get("tasks", task_name, key="task")
    problems = list(read.problems) + check_examples(
        read.examples,
        read.locations,
        task_name,
        pm,
        config,
        split=split,
        reference_labels=reference_labels,
        source=read.source,
    )
    if train is not None:
        problems += leaks(read.examples, read.locations, train.examples, train.locations, split)
    refused = {p.location for p in problems if p.severity in REFUSING}
    if labels is FROM_FILE:
        kept = [e for e, location in zip(read.examples, read.locations) if location not in refused]
        labels = task.label_set(kept) if kept else None
    features, examples, found = tokenize_examples(
        read.examples, read.locations, task, task_name, tokenizer, labels, pm, config, skip=refused
    )
    length_problems, lengths = check_lengths(
        features, read.locations, task, max_length if tokenizer is not None else None, limit=limit
    )
    return CheckedFile(
        read, examples, features, lengths, problems + found + length_problems, labels
    )


__all__ = ["CheckedFile", "check_file", "FROM_FILE", "transform_example", "tokenize_examples"]
