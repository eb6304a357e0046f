"""The whole data path of a job, before the model loads::

    read ─► check (task.validate, validate_example hooks, duplicates, counts, task.check_split)
         ─► transform_example hooks ─► task.tokenize ─► lengths ─► split ─► balance

Every error of every file is raised at once, in one :class:`DataProblems`, before anything heavy
happens; examples with an ``"excluded"`` problem are left out and reported; warnings travel with
the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import DataError, PluginError
from ..types import Problem, Task, optional
from .checks import (MIN_EXAMPLES, call_impl, check_examples, check_lengths, describe_plugin, hookimpls,
                     leaks, sort_problems)
from .reading import ReadFile, read_file
from .splits import balance_indices, split_indices
from .summary import summarize

SPLITS = ("train", "validation", "test")


class DataProblems(DataError):
    """The data cannot be trained on. ``str()`` lists every error; ``problems`` holds every
    problem, ``summary`` what was found in the files that could be read."""

    def __init__(self, message: str, problems: Sequence[Problem], summary: dict | None = None):
        super().__init__(message)
        self.problems = list(problems)
        self.summary = summary or {}


@dataclass
class Split:
    """The examples of one split with where each came from and its tokenized features."""

    examples: list[dict] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    lengths: list[int | None] = field(default_factory=list)

    def take(self, indices: Sequence[int]) -> "Split":
        return Split([self.examples[i] for i in indices], [self.locations[i] for i in indices],
                     [self.features[i] for i in indices], [self.lengths[i] for i in indices])

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class PreparedData:
    """Checked, transformed and tokenized data of a job: ``train``, ``validation`` and ``test``
    splits (empty when the config asks for none), the task's ``labels``, every problem that did
    not stop the job (warnings and exclusions), and a summary per split."""

    train: Split
    validation: Split
    test: Split
    labels: list[str] | None
    problems: list[Problem]
    summary: dict

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def transform_example(example: dict, location: str, task_name: str, pm: Any, config: Any = None) -> dict:
    """Run every ``transform_example`` implementation over one example, in pluggy's call order,
    each seeing the previous one's output (``None`` leaves it as it is). A
    :class:`tunewright.DataError` from a transform passes through (the caller reports it at the
    example's location); any other exception is a :class:`tunewright.PluginError` naming the
    plugin."""
    current = example
    for impl in hookimpls(pm, "transform_example"):
        new = call_impl(pm, impl, "transform_example", location, example=current, task=task_name,
                        config=config, location=location)
        if new is not None:
            current = new
    return current


def tokenize_examples(examples: Sequence[dict], locations: Sequence[str], task: Any, task_name: str,
                      tokenizer: Any, labels: list[str] | None, pm: Any, config: Any = None,
                      skip: set[str] = frozenset()) -> tuple[list[dict | None], list[dict], list[Problem]]:
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
                raise PluginError(f"task {task_name!r} ({describe_plugin(pm, owner)}) failed to "
                                  f"tokenize {location}: {type(exc).__name__}: {exc}") from exc
        features.append(feature)
        transformed.append(example)
    return features, transformed, problems


def prepare_data(config: Any, pm: Any, tokenizer: Any = None, *, labels: list[str] | None = None) -> PreparedData:
    """Read, check, transform, tokenize, split and balance the data of a job config.

    ``config.data.train`` is read with ``config.data.format``; ``validation`` and ``test`` are
    files, or fractions of train split off with ``config.seed`` (stratified by the task's
    ``stratify_key``; test first, both fractions of the whole file). If anything is an error, one
    :class:`DataProblems` lists every error, in file and line order, before any training.
    Without a ``tokenizer`` nothing is tokenized (and no length is checked). ``labels`` fixes the
    label set instead of taking it from the training data (checked against every split).
    """
    fixed_labels = labels
    data = config.data
    task_name = config.task
    task = pm.registries.get("tasks", task_name, key="task")
    seed = int(config.seed)
    problems: list[Problem] = []

    files: dict[str, ReadFile] = {}
    for name in SPLITS:
        value = data.train if name == "train" else getattr(data, name)
        if name != "train" and not isinstance(value, str):
            continue
        read = read_file(value, pm.registries, data.format)
        problems += read.problems + ([read.fatal] if read.fatal else [])
        files[name] = read

    train = files["train"]
    if fixed_labels is not None:
        labels = list(fixed_labels)
    else:
        labels = task.label_set(train.examples) if train.readable and train.examples else None
    for name, read in files.items():
        if not read.readable:
            continue
        reference = labels if name != "train" or fixed_labels is not None else None
        problems += check_examples(read.examples, read.locations, task_name, pm, config,
                                   split=name, reference_labels=reference, source=read.source)
        if name != "train":
            problems += leaks(read.examples, read.locations, train.examples, train.locations, name)

    fractions = {name: getattr(data, name) for name in ("validation", "test")
                 if isinstance(getattr(data, name), float) and getattr(data, name) > 0}
    if sum(fractions.values()) >= 1:
        problems.append(Problem("data.validation", (
            f"validation {fractions.get('validation')} and test {fractions.get('test')} leave no "
            "training data (their sum must be below 1)")))
    stratify = optional(task, Task, "stratify_key")
    if data.balance != "none" and train.readable and train.examples and (
            stratify is None or any(stratify(e) is None for e in train.examples)):
        problems.append(Problem("data.balance", (
            f"{data.balance} needs examples that task {task_name!r} groups by label; these have "
            "none (allowed here: none)")))

    limit = getattr(tokenizer, "model_max_length", None)
    # transformers sets a huge model_max_length when the tokenizer does not know the limit
    if isinstance(limit, int) and limit < 10**6 and data.max_length > limit:
        problems.append(Problem("data.max_length", (
            f"{data.max_length} is above the model's limit of {limit} tokens (examples longer than "
            f"{limit} will fail; lower data.max_length to {limit})"), "warning"))

    # Examples refused outright are not tokenized; excluded ones are left out from here on.
    refused = {p.location for p in problems if p.severity in ("error", "excluded")}
    if train.readable and fixed_labels is None:
        kept = [e for e, location in zip(train.examples, train.locations) if location not in refused]
        labels = task.label_set(kept) if kept else labels
    parts: dict[str, Split] = {}
    for name, read in files.items():
        if not read.readable:
            continue
        features, transformed, found = tokenize_examples(
            read.examples, read.locations, task, task_name, tokenizer, labels, pm, config, skip=refused)
        problems += found
        length_problems, lengths = check_lengths(features, read.locations, task,
                                                 data.max_length if tokenizer is not None else None)
        problems += length_problems
        parts[name] = Split(transformed, list(read.locations), features, lengths)

    sources = [read.source for read in files.values()]
    problems = sort_problems(problems, sources)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        summary = {name: {**summarize(part.examples, task, lengths=part.lengths, config=config,
                                      locations=part.locations, problems=problems),
                          "source": files[name].source, "format": files[name].format}
                   for name, part in parts.items()}
        raise DataProblems(error_message(errors, problems), problems, summary)

    excluded = {p.location for p in problems if p.severity == "excluded"}
    for name, part in parts.items():
        keep = [i for i, location in enumerate(part.locations) if location not in excluded]
        parts[name] = part.take(keep)
    if excluded and len(parts["train"]) < MIN_EXAMPLES:
        left = len(parts["train"])
        problems.append(Problem(train.source, (
            f"{left} example{'s' if left != 1 else ''} left after the exclusions above; at least "
            f"{MIN_EXAMPLES} are needed to train and evaluate")))
        raise DataProblems(error_message(problems[-1:], problems), problems)

    # Split fractions off train: test first, then validation, each a fraction of the whole file.
    whole = parts["train"]
    pool = list(range(len(whole)))
    held: dict[str, list[int]] = {}
    for offset, name in enumerate(("test", "validation")):
        if name not in fractions:
            continue
        share = fractions[name] / (len(pool) / len(whole)) if pool else 0.0
        subset = [whole.examples[i] for i in pool]
        kept, taken = split_indices(subset, min(share, 0.999), seed + offset, stratify)
        held[name] = [pool[i] for i in taken]
        pool = [pool[i] for i in kept]
    result = {name: parts[name] if name in files and name != "train" else
              whole.take(held.get(name, [])) for name in ("validation", "test")}
    train_part = whole.take(pool)
    order = balance_indices(train_part.examples, data.balance, seed, stratify)
    result["train"] = train_part.take(order)

    summary = {}
    for name in SPLITS:
        part = result[name]
        if not len(part):
            continue
        origin = files.get(name, train)
        summary[name] = {
            **summarize(part.examples, task, lengths=part.lengths, config=config, estimate=name == "train",
                        locations=part.locations, problems=problems),
            "source": origin.source if name in files else f"{train.source} (a fraction {fractions[name]} split off)",
            "format": origin.format,
        }
    return PreparedData(train=result["train"], validation=result["validation"], test=result["test"],
                        labels=labels, problems=problems, summary=summary)


def error_message(errors: list[Problem], problems: list[Problem]) -> str:
    others = len(problems) - len(errors)
    head = (f"{len(errors)} error{'s' if len(errors) != 1 else ''} in the data; nothing was trained"
            + (f" ({others} other problem{'s' if others != 1 else ''} too)" if others else "") + ":")
    return "\n".join([head] + [str(p) for p in errors])


__all__ = ["DataProblems", "PreparedData", "Split", "prepare_data", "transform_example",
           "tokenize_examples", "error_message", "SPLITS"]
