"""The data layer: from the files a config names to checked examples, before any training.

::

    read_examples ─► check_examples ─► split ─► transform_example hooks ─► balance
      (formats)       (validate_example hooks + duplicates, lengths, labels, counts)

:func:`prepare_data` runs the whole path for a job and raises one :class:`DataProblems` (a
:class:`tunewright.DataError`) that lists every error as ``file:line: what (what is allowed)``;
warnings travel with it and with the :class:`PreparedData` it returns otherwise.

The core knows no format and no task by name: formats come from the ``dataset_formats`` registry,
checks from ``validate_example`` hooks, and the two canonical shapes are told apart by their keys
(``messages`` for chat, ``label`` for classification). Labels follow the classification task's
rule: a number that is not whole makes the data regression; otherwise labels are compared by their
text, ``str(label)``.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import DataError, PluginError
from .types import Problem

#: fewer training examples than this is an error, fewer than RECOMMENDED_EXAMPLES a warning
MIN_EXAMPLES = 10
RECOMMENDED_EXAMPLES = 50

_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


class DataProblems(DataError):
    """The data cannot be trained on. ``str()`` lists every error; ``problems`` holds errors and
    warnings, ``summary`` what :func:`summarize` found in the files that could be read."""

    def __init__(self, message: str, problems: Sequence[Problem], summary: dict | None = None):
        super().__init__(message)
        self.problems = list(problems)
        self.summary = summary or {}

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass
class PreparedData:
    """Examples ready to tokenize. ``validation``/``test`` are empty when the config asks for
    none; ``labels`` are the task's label names (``None`` for chat and regression); ``problems``
    are the warnings that did not stop the job; ``locations`` say where each example came from
    (``"data/train.jsonl:17"``), in the same order as the examples."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    labels: list[str] | None
    problems: list[Problem]
    summary: dict
    locations: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_examples(path: str | Path, registries: Any, format: str = "auto"
                  ) -> tuple[list[dict], list[str], list[Problem]]:
    """Read one data file with a registered dataset format.

    Returns ``(examples, locations, problems)``: the examples that could be read, where each came
    from (``"path:line"``), and a :class:`Problem` for every line that could not. ``format`` is a
    registered format name, or ``"auto"``: the formats that read the file's suffix are asked
    (``detect(record)``, else whether ``to_example`` accepts it) about the first record one of
    them recognises, and a later line that another of them would recognise is reported as a mix.

    Raises :class:`tunewright.DataError` for a file that cannot be read at all (missing, a
    directory, empty, not UTF-8 text, a suffix no format reads) and
    :class:`tunewright.ConfigError` for an unknown format name.
    """
    examples, locations, problems, _, fatal = _read(path, registries, format)
    if fatal is not None:
        raise DataError(str(fatal))
    return examples, locations, problems


def _read(path: str | Path, registries: Any, format: str = "auto"):
    """``read_examples`` that also returns the format's name and, instead of raising, the
    file-level problem."""
    registries = getattr(registries, "registries", registries)  # a plugin manager will do
    shown = str(path)
    path = Path(path)
    formats = registries.kind("dataset_formats")
    suffixes = sorted({s.lower() for f in formats.values() for s in getattr(f, "suffixes", ())})
    expected = f"expected a data file ending in {', '.join(suffixes) or '(no format is registered)'}"

    def fatal(message: str, where: str = shown):
        return [], [], [], None, Problem(where, message)

    if not path.exists():
        near = _near_files(path)
        return fatal(f"file not found{near} ({expected})")
    if path.is_dir():
        return fatal(f"is a directory, not a data file ({expected})")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        return fatal(f"cannot be read: {exc.strerror or exc}")
    if not head.strip():
        return fatal(f"the file is empty ({expected})")
    if head.startswith(_UTF16_32_BOMS):
        return fatal("the file is UTF-16 or UTF-32 text; save it as UTF-8", f"{shown}:1")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        return fatal("the file holds NUL bytes: binary data or UTF-16 text without a byte-order "
                     "mark (expected UTF-8 text)", f"{shown}:{line}")

    if format != "auto":
        chosen_name = format
        chosen = registries.get("dataset_formats", format, key="data.format")
        candidates = [(format, chosen)]
    else:
        suffix = path.suffix.lower()
        candidates = [(name, f) for name, f in formats.items()
                      if suffix in {s.lower() for s in getattr(f, "suffixes", ())}]
        if not candidates:
            return fatal(f"cannot tell the format of a {suffix or 'suffix-less'!r} file ({expected}; "
                         f"or set data.format to one of: {', '.join(sorted(formats)) or 'none'})")
        chosen_name, chosen = candidates[0]

    records = _read_records(chosen, chosen_name, path, registries)
    if not records:
        return fatal(f"the file is empty: it holds no records ({expected})")

    detected_line = None
    if format == "auto" and len(candidates) > 1:
        for number, record in records:
            if isinstance(record, DataError):
                continue
            match = next(((n, f) for n, f in candidates if _detects(f, record)), None)
            if match is not None:
                detected_line = number
                if type(match[1]).read is not type(chosen).read:
                    records = _read_records(match[1], match[0], path, registries)
                chosen_name, chosen = match
                break

    examples, locations, problems = [], [], []
    for number, record in records:
        location = f"{shown}:{number}"
        if isinstance(record, DataError):
            problems.append(Problem(location, str(record)))
            continue
        if detected_line is None and len(candidates) > 1:
            problems.append(Problem(location, _no_format_message(record, candidates, path)))
            continue
        if detected_line is not None and not _detects(chosen, record):
            others = [n for n, f in candidates if f is not chosen and _detects(f, record)]
            if others:
                problems.append(Problem(location, (
                    f"this line is {others[0]} data, but the file was read as {chosen_name} "
                    f"(recognised at line {detected_line}); one file holds one format: convert "
                    "the line or move it to a file of its own")))
                continue
        try:
            example = chosen.to_example(record)
        except DataError as exc:
            problems.append(Problem(location, str(exc)))
            continue
        except Exception as exc:  # a bug in the format, not in the data
            raise PluginError(
                f"{_owner(registries, chosen_name)} failed to convert {location}: "
                f"{type(exc).__name__}: {exc}") from exc
        examples.append(example)
        locations.append(location)
    return examples, locations, problems, chosen_name, None


def _read_records(fmt: Any, name: str, path: Path, registries: Any) -> list[tuple[int, Any]]:
    try:
        return list(fmt.read(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except DataError:
        raise
    except Exception as exc:
        raise PluginError(f"{_owner(registries, name)} failed to read {path}: "
                          f"{type(exc).__name__}: {exc}") from exc


def _owner(registries: Any, name: str) -> str:
    try:
        return f"dataset format {name!r} (plugin {registries.owner('dataset_formats', name)!r})"
    except Exception:
        return f"dataset format {name!r}"


def _detects(fmt: Any, record: Any) -> bool:
    detect = getattr(fmt, "detect", None)
    try:
        if callable(detect):
            return bool(detect(record))
        fmt.to_example(record)
        return True
    except Exception:
        return False


def _no_format_message(record: Any, candidates: list, path: Path) -> str:
    keys = ", ".join(map(str, record)) if isinstance(record, dict) else f"a JSON {type(record).__name__}"
    wanted = "; ".join(f"{name}: {getattr(f, 'description', name)}" for name, f in candidates)
    return (f"no format for {path.suffix} files takes this record (found: {keys}); "
            f"expected one of {wanted}")


def _near_files(path: Path) -> str:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f" (the folder {folder} does not exist either)"
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError:
        return ""
    near = difflib.get_close_matches(path.name, names, n=1, cutoff=0.85)
    return f"; did you mean {str(folder / near[0])!r}?" if near else ""


# ---------------------------------------------------------------------------------------------
# Labels and tokens
# ---------------------------------------------------------------------------------------------


def _labelled(examples: Sequence[Any]) -> bool:
    return bool(examples) and all(isinstance(e, dict) and "label" in e for e in examples)


def _is_regression(labels: Iterable[Any]) -> bool:
    return any(isinstance(v, float) and not float(v).is_integer() for v in labels)


def _has_classes(examples: Sequence[Any]) -> bool:
    return _labelled(examples) and not _is_regression(e["label"] for e in examples)


def label_names(examples: Sequence[dict]) -> list[str] | None:
    """The sorted label names of classification examples (whole numbers sorted as numbers), or
    ``None`` for chat and regression examples: the classification task's own rule."""
    if not _has_classes(examples):
        return None
    names = {str(e["label"]) for e in examples}
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def count_tokens(examples: Sequence[dict], tokenizer: Any, task: Any = None,
                 locations: Sequence[str] | None = None) -> tuple[list[int | None], list[Problem]]:
    """How many tokens each example takes: ``task.count_tokens`` where the task has it, else
    the chat template for chat examples and ``tokenizer(text)`` for text. An example that cannot
    be tokenized counts ``None`` and gets a problem."""
    locations = list(locations) if locations is not None else [f"example {i + 1}" for i in range(len(examples))]
    counts: list[int | None] = [None] * len(examples)
    problems: list[Problem] = []
    counter = getattr(task, "count_tokens", None)
    texts = [(i, e["text"]) for i, e in enumerate(examples)
             if counter is None and isinstance(e, dict) and "messages" not in e and isinstance(e.get("text"), str)]
    for start in range(0, len(texts), 512):
        chunk = texts[start:start + 512]
        encoded = tokenizer([text for _, text in chunk])["input_ids"]
        for (i, _), ids in zip(chunk, encoded):
            counts[i] = len(ids)
    no_template = counter is None and getattr(tokenizer, "chat_template", None) is None
    for i, example in enumerate(examples):
        if counts[i] is not None or not isinstance(example, dict):
            continue
        try:
            if counter is not None:
                counts[i] = int(counter(example, tokenizer))
            elif "messages" in example and not no_template:
                counts[i] = len(tokenizer.apply_chat_template(example["messages"], tokenize=True))
        except Exception as exc:
            problems.append(Problem(locations[i], f"cannot be tokenized for this model: {exc}"))
    if no_template and any(isinstance(e, dict) and "messages" in e for e in examples):
        problems.append(Problem(_source(locations), (
            "the tokenizer has no chat template, so chat examples cannot be rendered (use a chat "
            "model, or a task that sets a template)")))
    return counts, problems


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def check_examples(examples: Sequence[dict], locations: Sequence[str], task_name: str, pm: Any,
                   config: Any = None, tokenizer: Any = None, max_length: int | None = None,
                   reference_labels: Iterable[Any] | None = None, *, split_name: str | None = None,
                   source: str | None = None, token_counts: Sequence[int | None] | None = None,
                   ) -> list[Problem]:
    """Check the examples of one file; return every problem, errors and warnings, in file order.

    Per example: every ``validate_example`` implementation (problems of all are collected).
    Per file: exact duplicates (a warning naming both lines); examples longer than
    ``max_length`` tokens (an error; ``max_length`` defaults to ``config.data.max_length`` and the
    length is only checked when a ``tokenizer`` is given); labels of a validation or test file
    missing from ``reference_labels`` (the training labels; an error); labels that mix text and
    numbers; and for training data: fewer than 10 examples (an error), fewer than 50 (a warning),
    a single class. ``split_name`` names the data in messages (default: ``"train"`` without
    ``reference_labels``, else ``"evaluation"``; fewer than 10 evaluation examples only warn).
    ``token_counts`` skips counting when the caller has counted.
    """
    if split_name is None:
        split_name = "train" if reference_labels is None else "evaluation"
    examples, locations = list(examples), list(locations)
    source = source or _source(locations)
    problems: list[Problem] = []
    for example, location in zip(examples, locations):
        problems += _validate(pm, example, task_name, config, location)
    problems += _duplicates(examples, locations)
    problems += _label_problems(examples, locations, source, reference_labels, split_name)

    count = len(examples)
    if split_name == "train":
        if count < MIN_EXAMPLES:
            problems.append(Problem(source, (
                f"{count} usable example{'s' if count != 1 else ''}; at least {MIN_EXAMPLES} are "
                f"needed to train and evaluate ({RECOMMENDED_EXAMPLES} or more recommended)")))
        elif count < RECOMMENDED_EXAMPLES:
            problems.append(Problem(source, (
                f"only {count} examples; {RECOMMENDED_EXAMPLES} or more are recommended for a "
                "result that generalises"), "warning"))
    elif 0 < count < MIN_EXAMPLES:
        problems.append(Problem(source, (
            f"only {count} {split_name} examples; metrics on fewer than {MIN_EXAMPLES} say little"),
            "warning"))

    if tokenizer is not None:
        if max_length is None:
            max_length = getattr(getattr(config, "data", None), "max_length", None)
        if token_counts is None:
            task = _task(pm, task_name)
            token_counts, token_problems = count_tokens(examples, tokenizer, task, locations)
            problems += token_problems
        if max_length:
            for n, location in zip(token_counts, locations):
                if n is not None and n > max_length:
                    problems.append(Problem(location, (
                        f"{n} tokens, longer than data.max_length {max_length} (shorten or split "
                        "the example, or raise data.max_length)")))
            model_limit = getattr(tokenizer, "model_max_length", None)
            # transformers sets a huge model_max_length when the tokenizer does not know it
            known_limit = isinstance(model_limit, int) and model_limit < 10**6
            if split_name == "train" and known_limit and max_length > model_limit:
                problems.append(Problem("data.max_length", (
                    f"{max_length} is above the model's limit of {model_limit} tokens (examples "
                    f"longer than {model_limit} will fail or be cut)"), "warning"))
    return sort_problems(problems)


def _task(pm: Any, task_name: str) -> Any:
    try:
        return pm.registries.kind("tasks").get(task_name)
    except Exception:
        return None


def _hookimpls(pm: Any, hook_name: str) -> list:
    """The implementations of a hook in pluggy's call order (tryfirst first, trylast last).
    Wrappers are left out: these hooks are called one implementation at a time so that an
    error can name its plugin."""
    hook = getattr(pm.hook, hook_name)
    return [impl for impl in reversed(hook.get_hookimpls())
            if not (getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False))]


def _describe(pm: Any, plugin_name: str) -> str:
    info = getattr(pm, "infos", {}).get(plugin_name)
    return info.describe() if info is not None else f"plugin {plugin_name!r}"


def _call(pm: Any, impl: Any, hook_name: str, where: str, **kwargs) -> Any:
    try:
        return impl.function(*[kwargs[name] for name in impl.argnames])
    except DataError:
        raise
    except Exception as exc:
        raise PluginError(f"{_describe(pm, impl.plugin_name)} failed in {hook_name} at {where}: "
                          f"{type(exc).__name__}: {exc}") from exc


def _validate(pm: Any, example: dict, task_name: str, config: Any, location: str) -> list[Problem]:
    found: list[Problem] = []
    for impl in _hookimpls(pm, "validate_example"):
        try:
            result = _call(pm, impl, "validate_example", location, example=example,
                           task=task_name, config=config, location=location)
        except DataError as exc:
            result = [Problem(location, str(exc))]
        if result is None:
            continue
        for item in result if isinstance(result, (list, tuple)) else [result]:
            found.append(item if isinstance(item, Problem) else Problem(location, str(item)))
    return found


def _key(example: Any) -> str:
    return json.dumps(example, sort_keys=True, ensure_ascii=False, default=repr)


def _duplicates(examples: list, locations: list[str]) -> list[Problem]:
    first: dict[str, str] = {}
    problems = []
    for example, location in zip(examples, locations):
        key = _key(example)
        if key in first:
            problems.append(Problem(location, (
                f"the same example as {first[key]} (an exact duplicate counts twice; remove one)"),
                "warning"))
        else:
            first[key] = location
    return problems


def _label_problems(examples: list, locations: list[str], source: str,
                    reference_labels: Iterable[Any] | None, split_name: str) -> list[Problem]:
    pairs = [(e["label"], loc) for e, loc in zip(examples, locations)
             if isinstance(e, dict) and isinstance(e.get("label"), (str, int, float))
             and not isinstance(e.get("label"), bool)]
    if not pairs:
        return []
    problems = []
    texts = [(label, loc) for label, loc in pairs if isinstance(label, str)]
    numbers = [(label, loc) for label, loc in pairs if not isinstance(label, str)]
    if texts and numbers:
        minority, majority = (numbers, texts) if len(numbers) <= len(texts) else (texts, numbers)
        label, first_loc = majority[0]
        for value, loc in minority:
            problems.append(Problem(loc, (
                f"label {value!r} is {'a number' if minority is numbers else 'text'}, but "
                f"{first_loc} has {label!r} (use one kind of label in a dataset: class names, "
                "whole numbers, or numbers for regression)")))
        return problems
    regression = _is_regression(label for label, _ in pairs)
    if reference_labels is not None and not regression:
        known = {str(label) for label in reference_labels}
        shown = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
        for label, loc in pairs:
            if str(label) not in known:
                problems.append(Problem(loc, (
                    f"label {label!r} does not occur in the training data (training labels: "
                    f"{shown})")))
    if split_name == "train" and not regression and len(pairs) == len(examples):
        distinct = {str(label) for label, _ in pairs}
        if len(distinct) == 1:
            problems.append(Problem(source, (
                f"every example has the label {pairs[0][0]!r} (classification needs at least two "
                "labels; for regression use numbers that are not all whole)")))
    return problems


def _parse_location(location: str) -> tuple[str, int]:
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
        order.setdefault(_parse_location(problem.location)[0], len(order))
    return sorted(problems, key=lambda p: (order[_parse_location(p.location)[0]],
                                           _parse_location(p.location)[1]))


def _source(locations: Sequence[str]) -> str:
    return _parse_location(locations[0])[0] if locations else "data"


# ---------------------------------------------------------------------------------------------
# Splitting and balancing
# ---------------------------------------------------------------------------------------------


def split(examples: Sequence[dict], fraction: float, seed: int, stratify: bool | None = None
          ) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the examples (at least one when ``fraction > 0`` and there are
    two or more), the same way for the same seed.

    ``stratify`` (default: when every example has a class label) keeps each label's proportion
    in both parts, and every label keeps at least one training example. Both parts keep the
    examples' original order.
    """
    kept, held = _split_indices(examples, fraction, seed, stratify)
    return [examples[i] for i in kept], [examples[i] for i in held]


def _split_indices(examples: Sequence[dict], fraction: float, seed: int,
                   stratify: bool | None = None) -> tuple[list[int], list[int]]:
    n = len(examples)
    if not fraction or fraction <= 0 or n < 2:
        return list(range(n)), []
    if fraction >= 1:
        raise ValueError(f"a split fraction must be below 1, got {fraction}")
    target = max(1, min(n - 1, round(n * fraction)))
    rng = random.Random(seed)
    if stratify is None:
        stratify = _has_classes(examples)
    if not stratify or not _labelled(examples):
        order = list(range(n))
        rng.shuffle(order)
        held = order[:target]
    else:
        groups: dict[str, list[int]] = {}
        for i, example in enumerate(examples):
            groups.setdefault(str(example["label"]), []).append(i)
        names = sorted(groups)
        for name in names:
            rng.shuffle(groups[name])
        exact = {name: len(groups[name]) * target / n for name in names}
        cap = {name: len(groups[name]) - 1 for name in names}  # every label keeps one to train on
        quota = {name: min(math.floor(exact[name]), cap[name]) for name in names}
        remaining = target - sum(quota.values())
        while remaining > 0:
            open_ = [name for name in names if quota[name] < cap[name]]
            if not open_:
                break
            best = max(open_, key=lambda name: (exact[name] - quota[name], -names.index(name)))
            quota[best] += 1
            remaining -= 1
        held = [i for name in names for i in groups[name][:quota[name]]]
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held_set)


def balance(examples: Sequence[dict], mode: str, seed: int) -> list[dict]:
    """Resample classification examples so that every label is equally frequent.

    ``"oversample"``: every label grows to the most frequent one's count (whole copies first,
    then a seeded draw without repetition); ``"undersample"``: every label shrinks to the rarest
    one's count (a seeded draw); ``"none"``: unchanged. The originals keep their order; added
    copies follow them. Raises :class:`tunewright.DataError` for examples without class labels.
    """
    return [examples[i] for i in _balance_indices(examples, mode, seed)]


def _balance_indices(examples: Sequence[dict], mode: str, seed: int) -> list[int]:
    if mode == "none":
        return list(range(len(examples)))
    if mode not in ("oversample", "undersample"):
        raise DataError(f"data.balance: unknown mode {mode!r} (allowed: none, oversample, undersample)")
    if not _has_classes(examples):
        raise DataError(f"data.balance: {mode} needs examples with class labels (allowed for "
                        "chat or regression data: none)")
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(str(example["label"]), []).append(i)
    rng = random.Random(seed)
    names = sorted(groups)
    if mode == "undersample":
        smallest = min(len(g) for g in groups.values())
        keep = {i for name in names for i in rng.sample(groups[name], smallest)}
        return sorted(keep)
    largest = max(len(g) for g in groups.values())
    extra = []
    for name in names:
        group = groups[name]
        copies, rest = divmod(largest - len(group), len(group))
        extra += group * copies + sorted(rng.sample(group, rest))
    return list(range(len(examples))) + extra


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def summarize(examples: Sequence[dict], task_name: str, tokenizer: Any = None, config: Any = None,
              *, token_counts: Sequence[int | None] | None = None) -> dict:
    """What the examples hold, as a JSON-ready dict.

    ``examples``; ``tokens`` (``total``, ``mean``, ``max``) when a tokenizer or ``token_counts``
    is given; ``labels`` (label -> count) for classes or ``target`` (min, mean, max) for
    regression; and with a job ``config``, ``training``: optimizer steps, examples seen and
    ``estimated_tokens`` = tokens per epoch x epochs, capped by ``training.max_steps`` x
    batch size x gradient accumulation x mean tokens when ``max_steps`` is set.
    """
    examples = list(examples)
    summary: dict[str, Any] = {"task": task_name, "examples": len(examples)}
    if token_counts is None and tokenizer is not None:
        token_counts, _ = count_tokens(examples, tokenizer)
    counted = [n for n in (token_counts or []) if n is not None]
    if counted:
        summary["tokens"] = {"total": sum(counted), "mean": round(sum(counted) / len(counted), 1),
                             "max": max(counted)}
    if _labelled(examples):
        values = [e["label"] for e in examples]
        if _is_regression(values):
            numbers = [float(v) for v in values if isinstance(v, (int, float))]
            if numbers:
                summary["target"] = {"min": min(numbers), "mean": round(sum(numbers) / len(numbers), 4),
                                     "max": max(numbers)}
        else:
            counts = Counter(str(v) for v in values)
            summary["labels"] = {name: counts[name] for name in (label_names(examples) or sorted(counts))}
    if any(isinstance(e, dict) and "messages" in e for e in examples):
        turns = [len(e["messages"]) for e in examples if isinstance(e.get("messages"), list)]
        if turns:
            summary["messages"] = {"mean": round(sum(turns) / len(turns), 1), "max": max(turns)}
    training = getattr(config, "training", None)
    if training is not None and examples:
        per_step = training.batch_size * training.gradient_accumulation_steps
        steps = math.ceil(training.epochs * math.ceil(len(examples) / per_step))
        seen = len(examples) * training.epochs
        if training.max_steps and training.max_steps > 0 and training.max_steps < steps:
            steps = training.max_steps
            seen = min(seen, steps * per_step)
        estimate = {"epochs": training.epochs, "optimizer_steps": steps,
                    "examples_seen": int(round(seen))}
        if counted:
            estimate["estimated_tokens"] = int(round(seen * sum(counted) / len(counted)))
        summary["training"] = estimate
        summary["estimated_training_tokens"] = estimate.get("estimated_tokens")
    return summary


# ---------------------------------------------------------------------------------------------
# The whole path for a job
# ---------------------------------------------------------------------------------------------


def transform_examples(examples: Sequence[dict], locations: Sequence[str], task_name: str, pm: Any,
                       config: Any = None) -> tuple[list[dict], list[Problem]]:
    """Run every ``transform_example`` implementation over each example, in pluggy's call order,
    each seeing the previous one's output (``None`` leaves the example as it is). A
    :class:`tunewright.DataError` from a transform becomes a problem at the example's location;
    any other exception is a :class:`tunewright.PluginError` naming the plugin."""
    impls = _hookimpls(pm, "transform_example")
    if not impls:
        return list(examples), []
    result, problems = [], []
    for example, location in zip(examples, locations):
        current = example
        for impl in impls:
            try:
                new = _call(pm, impl, "transform_example", location, example=current,
                            task=task_name, config=config)
            except DataError as exc:
                problems.append(Problem(location, str(exc)))
                break
            if new is not None:
                current = new
        result.append(current)
    return result, problems


def prepare_data(config: Any, pm: Any, tokenizer: Any = None) -> PreparedData:
    """Read, check, split, transform and balance the data of a job config.

    ``config.data.train`` is read with ``config.data.format``; ``validation`` and ``test`` are
    files, or fractions of train split off with ``config.seed`` (stratified by label; test first,
    both fractions of the whole file). Every file is checked with :func:`check_examples` (against
    the training labels for validation and test files, and for examples that also occur in
    train). If anything is an error, one :class:`DataProblems` lists every error, in file and
    line order, before any training; otherwise ``transform_example`` hooks run over every split
    and ``config.data.balance`` resamples train.
    """
    data = config.data
    task_name = config.task
    task = _task(pm, task_name)
    seed = int(getattr(config, "seed", 0))
    problems: list[Problem] = []

    files: dict[str, dict] = {}
    for split_name in ("train", "validation", "test"):
        value = data.train if split_name == "train" else getattr(data, split_name)
        if split_name != "train" and not isinstance(value, str):
            continue
        examples, locations, read_problems, fmt, fatal = _read(value, pm.registries, data.format)
        problems += read_problems + ([fatal] if fatal else [])
        files[split_name] = {"examples": examples, "locations": locations, "format": fmt,
                             "source": str(value), "readable": fatal is None}

    train = files["train"]
    train_labels = ([e["label"] for e in train["examples"]]
                    if _has_classes(train["examples"]) else None)
    counts: dict[str, list[int | None]] = {}
    for split_name, part in files.items():
        if not part["readable"]:
            continue
        if tokenizer is not None:
            counts[split_name], token_problems = count_tokens(
                part["examples"], tokenizer, task, part["locations"])
            problems += token_problems
        problems += check_examples(
            part["examples"], part["locations"], task_name, pm, config, tokenizer,
            data.max_length, None if split_name == "train" else (train_labels or None),
            split_name=split_name, source=part["source"], token_counts=counts.get(split_name))
        if split_name != "train":
            problems += _leaks(part, train, split_name)

    fractions = {name: getattr(data, name) for name in ("validation", "test")
                 if isinstance(getattr(data, name), float) and getattr(data, name) > 0}
    if sum(fractions.values()) >= 1:
        problems.append(Problem("data.validation", (
            f"validation {fractions.get('validation')} and test {fractions.get('test')} leave no "
            "training data (their sum must be below 1)")))
    if data.balance != "none" and train["readable"] and not _has_classes(train["examples"]):
        problems.append(Problem("data.balance", (
            f"{data.balance} needs examples with class labels; this data has none (allowed for "
            "chat or regression data: none)")))

    sources = [part["source"] for part in files.values()]
    problems = sort_problems(problems, sources)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        summary = {name: {**summarize(part["examples"], task_name, config=config,
                                      token_counts=counts.get(name)),
                          "source": part["source"], "format": part["format"]}
                   for name, part in files.items() if part["readable"]}
        raise DataProblems(_error_message(errors, problems), problems, summary)

    # Split fractions off train: test first, then validation, each a fraction of the whole file.
    indices = {"train": list(range(len(train["examples"])))}
    pool = indices["train"]
    for offset, split_name in enumerate(("test", "validation")):
        if split_name not in fractions:
            continue
        share = fractions[split_name] / (len(pool) / len(indices["train"]))
        subset = [train["examples"][i] for i in pool]
        kept, held = _split_indices(subset, min(share, 0.999), seed + offset)
        indices[split_name] = [pool[i] for i in held]
        pool = [pool[i] for i in kept]
    indices["train"] = pool

    parts: dict[str, tuple[list[dict], list[str], list[int | None] | None]] = {}
    for split_name in ("train", "validation", "test"):
        if split_name in files and split_name != "train":
            part = files[split_name]
            parts[split_name] = (part["examples"], part["locations"], counts.get(split_name))
        elif split_name in indices:
            chosen = indices[split_name]
            train_counts = counts.get("train")
            parts[split_name] = ([train["examples"][i] for i in chosen],
                                 [train["locations"][i] for i in chosen],
                                 [train_counts[i] for i in chosen] if train_counts else None)
        else:
            parts[split_name] = ([], [], None)

    transformed: dict[str, list[dict]] = {}
    transform_problems: list[Problem] = []
    for split_name, (examples, locations, _) in parts.items():
        transformed[split_name], found = transform_examples(examples, locations, task_name, pm, config)
        transform_problems += found
    if any(p.severity == "error" for p in transform_problems):
        problems = sort_problems(problems + transform_problems, sources)
        raise DataProblems(_error_message([p for p in problems if p.severity == "error"], problems),
                           problems)
    problems = sort_problems(problems + transform_problems, sources)

    train_examples, train_locations, train_counts = parts["train"]
    labels = (task.label_set(transformed["train"]) if hasattr(task, "label_set")
              else label_names(transformed["train"]))
    order = _balance_indices(transformed["train"], data.balance, seed)
    final = {
        "train": ([transformed["train"][i] for i in order], [train_locations[i] for i in order],
                  [train_counts[i] for i in order] if train_counts else None),
        "validation": (transformed["validation"], parts["validation"][1], parts["validation"][2]),
        "test": (transformed["test"], parts["test"][1], parts["test"][2]),
    }
    summary = {}
    for split_name, (examples, locations, split_counts) in final.items():
        if not examples:
            continue
        origin = files.get(split_name, train)
        summary[split_name] = {
            **summarize(examples, task_name, config=config if split_name == "train" else None,
                        token_counts=split_counts),
            "source": origin["source"] if split_name in files else
                      f"{train['source']} (a fraction {fractions[split_name]} split off)",
            "format": origin["format"],
        }
    return PreparedData(
        train=final["train"][0], validation=final["validation"][0], test=final["test"][0],
        labels=labels, problems=problems, summary=summary,
        locations={name: value[1] for name, value in final.items()})


def _leaks(part: dict, train: dict, split_name: str) -> list[Problem]:
    seen = {}
    for example, location in zip(train["examples"], train["locations"]):
        seen.setdefault(_key(example), location)
    return [Problem(location, (
        f"the same example as {seen[_key(example)]} in the training data (a {split_name} score "
        "on examples the model trained on says little)"), "warning")
        for example, location in zip(part["examples"], part["locations"]) if _key(example) in seen]


def _error_message(errors: list[Problem], problems: list[Problem]) -> str:
    warnings = len(problems) - len(errors)
    head = (f"{len(errors)} error{'s' if len(errors) != 1 else ''} in the data; nothing was "
            f"trained" + (f" ({warnings} warning{'s' if warnings != 1 else ''} too)" if warnings else "")
            + ":")
    return "\n".join([head] + [str(p) for p in errors])


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def render_report(problems: Sequence[Problem], summary: dict | None) -> str:
    """A plain-text report for the command line: what each file holds, then errors, then
    warnings. ``summary`` is one :func:`summarize` dict or a dict of them by split name."""
    lines: list[str] = []
    summary = summary or {}
    by_split = summary if summary and "examples" not in summary else ({"data": summary} if summary else {})
    for split_name, part in by_split.items():
        if not isinstance(part, dict):
            continue
        source = f" {part['source']}" if part.get("source") else ""
        fmt = f" ({part['format']})" if part.get("format") else ""
        lines.append(f"{split_name}:{source}{fmt}")
        facts = [f"{part.get('examples', 0):,} examples"]
        if part.get("tokens"):
            tokens = part["tokens"]
            facts.append(f"{tokens['total']:,} tokens (mean {tokens['mean']:g}, max {tokens['max']:,})")
        if part.get("messages"):
            facts.append(f"{part['messages']['mean']:g} messages per conversation")
        lines.append("  " + ", ".join(facts))
        if part.get("labels"):
            shown = ", ".join(f"{name} {count:,}" for name, count in list(part["labels"].items())[:20])
            more = ", ..." if len(part["labels"]) > 20 else ""
            lines.append(f"  labels: {shown}{more}")
        if part.get("target"):
            target = part["target"]
            lines.append(f"  target: min {target['min']:g}, mean {target['mean']:g}, max {target['max']:g}")
        if part.get("training"):
            training = part["training"]
            text = (f"  training: {training['epochs']:g} epoch(s), {training['optimizer_steps']:,} "
                    f"optimizer steps, {training['examples_seen']:,} examples seen")
            if training.get("estimated_tokens") is not None:
                text += f", about {training['estimated_tokens']:,} tokens"
            lines.append(text)
    problems = sort_problems(problems)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    for title, group in (("error", errors), ("warning", warnings)):
        if group:
            lines.append(f"{len(group)} {title}{'s' if len(group) != 1 else ''}:")
            lines += [f"  {p}" for p in group]
    if not problems:
        lines.append("no problems found")
    return "\n".join(lines)


__all__ = [
    "DataProblems", "PreparedData", "read_examples", "check_examples", "count_tokens",
    "label_names", "split", "balance", "summarize", "transform_examples", "prepare_data",
    "render_report", "sort_problems", "MIN_EXAMPLES", "RECOMMENDED_EXAMPLES",
]
