"""The whole data path of a job, before the model loads::

    read ─► check (task.validate, validate_example hooks, duplicates, counts, task.check_split)
         ─► transform_example hooks ─► task.tokenize ─► lengths ─► split ─► balance

Every error of every file is raised at once, in one :class:`DataProblems`, before anything heavy
happens; examples with an ``"excluded"`` problem are left out and reported; warnings travel with
the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ..errors import DataError
from ..types import Problem, Task, optional
from .checks import MIN_EXAMPLES, sort_problems
from .pipeline import FROM_FILE, CheckedFile, check_file, tokenize_examples, transform_example
from .reading import ReadFile
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

    def take(self, indices: Sequence[int]) -> Split:
        return Split(
            [self.examples[i] for i in indices],
            [self.locations[i] for i in indices],
            [self.features[i] for i in indices],
            [self.lengths[i] for i in indices],
        )

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


def prepare_data(
    config: Any, pm: Any, tokenizer: Any = None, *, labels: list[str] | None = None
) -> PreparedData:
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

    # Each file through the one per-file pipeline (read, check, transform, tokenize, lengths);
    # train first: the held-out files are checked against its labels and its examples.
    checked: dict[str, CheckedFile] = {}
    reference = labels = list(fixed_labels) if fixed_labels is not None else None
    max_length = data.max_length if tokenizer is not None else None
    for name in SPLITS:
        value = data.train if name == "train" else getattr(data, name)
        if name != "train" and not isinstance(value, str):
            continue
        if name == "train":
            result = check_file(
                value,
                task_name,
                pm,
                config,
                data_format=data.format,
                split=name,
                reference_labels=reference,
                labels=FROM_FILE if fixed_labels is None else labels,
                tokenizer=tokenizer,
                max_length=max_length,
            )
            train = result.read
            if fixed_labels is None and train.readable and train.examples:
                # held-out labels are compared with every training label; the model is built
                # with those of the usable training examples
                reference = task.label_set(train.examples)
                labels = result.labels if result.labels is not None else reference
        else:
            # the training file itself, held out whole (a federated server's central set, which
            # never trains): its examples are not reported as leaks of themselves
            whole = value == data.train
            result = check_file(
                value,
                task_name,
                pm,
                config,
                data_format=data.format,
                split=name,
                reference_labels=reference,
                labels=labels,
                tokenizer=tokenizer,
                max_length=max_length,
                train=train if train.readable and not whole else None,
            )
        checked[name] = result
        problems += result.problems
    files: dict[str, ReadFile] = {name: result.read for name, result in checked.items()}

    fractions = {
        name: getattr(data, name)
        for name in ("validation", "test")
        if isinstance(getattr(data, name), float) and getattr(data, name) > 0
    }
    if sum(fractions.values()) >= 1:
        problems.append(
            Problem(
                "data.validation",
                (
                    f"validation {fractions.get('validation')} and test {fractions.get('test')} leave no "
                    "training data (their sum must be below 1)"
                ),
            )
        )
    stratify = optional(task, Task, "stratify_key")
    if (
        data.balance != "none"
        and train.readable
        and train.examples
        and (stratify is None or any(stratify(e) is None for e in train.examples))
    ):
        problems.append(
            Problem(
                "data.balance",
                (
                    f"{data.balance} needs examples that task {task_name!r} groups by label; these have "
                    "none (allowed here: none)"
                ),
            )
        )

    limit = getattr(tokenizer, "model_max_length", None)
    # transformers sets a huge model_max_length when the tokenizer does not know the limit
    if isinstance(limit, int) and limit < 10**6 and data.max_length > limit:
        problems.append(
            Problem(
                "data.max_length",
                (
                    f"{data.max_length} is above the model's limit of {limit} tokens (examples longer than "
                    f"{limit} will fail; lower data.max_length to {limit})"
                ),
                "warning",
            )
        )

    # a feature is None only for an example refused (an error: the job stops below) or left out
    # (dropped below, before anything trains)
    parts = {
        name: Split(
            result.examples,
            list(result.locations),
            cast("list[dict]", result.features),
            result.lengths,
        )
        for name, result in checked.items()
        if result.read.readable
    }

    sources = [read.source for read in files.values()]
    problems = sort_problems(problems, sources)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        # what each file holds that could train: a refused example is not counted, nor its tokens
        summary = {
            name: {
                **summarize(
                    part.examples,
                    task,
                    lengths=part.lengths,
                    config=config,
                    locations=part.locations,
                    problems=problems,
                    usable=checked[name].usable(),
                ),
                "source": files[name].source,
                "format": files[name].format,
            }
            for name, part in parts.items()
        }
        raise DataProblems(error_message(errors, problems), problems, summary)

    excluded = {p.location for p in problems if p.severity == "excluded"}
    for name, part in parts.items():
        keep = [i for i, location in enumerate(part.locations) if location not in excluded]
        parts[name] = part.take(keep)
    if excluded and len(parts["train"]) < MIN_EXAMPLES:
        left = len(parts["train"])
        problems.append(
            Problem(
                train.source,
                (
                    f"{left} example{'s' if left != 1 else ''} left after the exclusions above; at least "
                    f"{MIN_EXAMPLES} are needed to train and evaluate"
                ),
            )
        )
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
    splits = {
        name: parts[name] if name in files else whole.take(held.get(name, []))
        for name in ("validation", "test")
    }
    train_part = whole.take(pool)
    order = balance_indices(train_part.examples, data.balance, seed, stratify)
    splits["train"] = train_part.take(order)

    summary = {}
    for name in SPLITS:
        part = splits[name]
        if not len(part):
            continue
        origin = files.get(name, train)
        summary[name] = {
            **summarize(
                part.examples,
                task,
                lengths=part.lengths,
                config=config,
                estimate=name == "train",
                locations=part.locations,
                problems=problems,
            ),
            "source": origin.source
            if name in files
            else f"{train.source} (a fraction {fractions[name]} split off)",
            "format": origin.format,
        }
    return PreparedData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        labels=labels,
        problems=problems,
        summary=summary,
    )


def error_message(errors: list[Problem], problems: list[Problem]) -> str:
    others = len(problems) - len(errors)
    head = (
        f"{len(errors)} error{'s' if len(errors) != 1 else ''} in the data; nothing was trained"
        + (f" ({others} other problem{'s' if others != 1 else ''} too)" if others else "")
        + ":"
    )
    return "\n".join([head] + [str(p) for p in errors])


__all__ = [
    "DataProblems",
    "PreparedData",
    "Split",
    "prepare_data",
    "transform_example",
    "tokenize_examples",
    "error_message",
    "SPLITS",
]
