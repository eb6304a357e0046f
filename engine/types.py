"""The protocols a plugin implements and the small records passed between them.

Protocols rather than base classes: a plugin's object needs the attributes and methods named here,
nothing more, and never imports a private name of ours.

A protocol's optional members are declared in a companion protocol (``TaskOptions`` beside
``Task``...): a plugin may leave them out, and the engine then does what their docstring says it
does without them. The engine looks up an optional member only through :func:`optional`, which
refuses a name the companion does not declare, so this file is the complete list of what the engine
asks of a plugin's objects (a test walks the engine's source to keep it so).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    Protocol,
    runtime_checkable,
)

if TYPE_CHECKING:
    from .run import Run


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an example: ``data/train.jsonl:17: no assistant turn (...)``.

    ``severity``: ``"error"`` stops the job before anything trains; ``"warning"`` is reported and
    the example is used; ``"excluded"`` is reported and the example is left out, the job goes on
    (an image refused by content screening, for instance).
    """

    location: str
    message: str
    severity: Literal["error", "warning", "excluded"] = "error"

    def __str__(self) -> str:
        prefix = {"warning": "warning: ", "excluded": "excluded: "}.get(self.severity, "")
        return f"{self.location}: {prefix}{self.message}"


def optional(obj: Any, protocol: type, name: str, default: Any = None) -> Any:
    """``obj.name`` if ``obj`` has it, else ``default``; ``name`` must be an optional member that
    ``protocol`` declares (see :data:`OPTIONAL`), so the engine never asks for a name that a
    plugin author cannot find documented here."""
    if name not in OPTIONAL.get(protocol.__name__, ()):
        raise AssertionError(f"{protocol.__name__} declares no optional member {name!r}")
    return getattr(obj, name, default)


# -------------------------------------------------------------------------
# Models and data
# -------------------------------------------------------------------------


@runtime_checkable
class ModelProvider(Protocol):
    """A pretrained model registered by name (``register_models``)."""

    #: one line for ``tunewright plugins``
    description: str

    def resolve(self) -> Path:
        """Return a local Hugging Face folder holding config, weights and preprocessing files
        (converting or unpacking on first use, atomically, into ``tunewright.cache_dir()``).

        A provider that builds on another registered model names a keyword parameter ``models``
        (``def resolve(self, models=None)``): the engine then passes the registered model
        providers by name, and the provider looks the other model up there."""


@runtime_checkable
class DatasetFormat(Protocol):
    """Reads one kind of data file (``register_dataset_formats``).

    Optional members: ``description`` (one line naming what a record looks like, shown when no
    format takes a file), ``detect(record) -> bool`` (whether a record is this format's; without
    it ``format: auto`` tries ``to_example``), ``directory`` (``True`` for a format that reads a
    folder rather than a file: a folder per class of images, for instance) and
    ``task_for(examples) -> str | None`` (the task its examples are for when the user names none:
    ``tunewright validate data.jsonl`` without ``--task``).
    """

    suffixes: tuple[str, ...]

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        """Yield ``(line_number, record)``; a record that cannot be parsed is yielded as a
        :class:`tunewright.DataError` so that every broken line can be reported at once. A folder
        format numbers its records as it likes (a file's position in a sorted listing)."""

    def to_example(self, record: Any) -> dict:
        """Turn a parsed record into an example of the shape its task expects, or raise
        :class:`tunewright.DataError` with what is wrong and what is allowed."""


class DatasetFormatOptions(Protocol):
    """The optional members of a :class:`DatasetFormat` (see its docstring)."""

    description: str
    directory: bool

    def detect(self, record: Any) -> bool: ...

    def task_for(self, examples: list[dict]) -> str | None: ...


# -------------------------------------------------------------------------
# Tasks
# -------------------------------------------------------------------------


@runtime_checkable
class Task(Protocol):
    """What is learnt, from which examples, and how it is measured (``register_tasks``).

    A task owns its data: it says what a valid example is, what its labels are, how examples
    are grouped when data is split, how long a tokenized example is, and how a batch is scored.
    The engine knows no task by name; it asks.

    Optional members: ``description``; ``check_split(examples, locations, *, split,
    reference_labels) -> list[Problem]`` (rules across the examples of one file, such as a label
    of the validation data that training never saw; default: none); ``stratify_key(example) ->
    str | None`` (the group an example belongs to when data is split or balanced; default: no
    stratification); ``num_tokens(features) -> int | None`` (the length of a tokenized example,
    checked against ``data.max_length``; default: ``len(features["input_ids"])`` when present);
    ``metric_for(labels) -> str`` (a primary metric that depends on the labels: ``mse`` for
    regression; default: ``primary_metric``); ``summarize(examples, *, locations, problems,
    config) -> dict`` and ``render_summary(summary) -> list[str]`` (facts of the task's own for
    ``tunewright validate``: images and pixels, for instance; ``summarize`` is given only the
    keywords it names: the examples' ``file:line`` locations, every problem found in them,
    screening's exclusions included, and the job config or ``None``); ``default_model`` (the
    registered model whose tokenizer or image processor ``tunewright validate`` uses when no model
    or config is named); ``progress_unit`` (what the training progress line counts per second:
    ``"images"`` for a task whose examples are one image each; default ``"tok"``);
    ``loss(model, batch) -> (summed_loss, count)`` (the training loss of a batch from
    :meth:`collate`, summed over the items it counts, label tokens or examples, and how many
    there are: the engine divides by the count over every micro-batch of a step and every process,
    so gradient accumulation and ``torchrun`` give the gradient of one big batch; default:
    ``model(**batch).loss`` taken as the mean over the batch's examples).
    """

    #: the task kind (:mod:`tunewright.kinds`): what shape of model the task trains
    model_kind: str
    #: the metric early stopping and the parity gate watch unless told otherwise
    primary_metric: str
    #: every metric :meth:`metrics` reports, mapped to ``"max"`` or ``"min"``: which way is better
    metric_directions: Mapping[str, str]

    def load_tokenizer(self, path: Path | str, trust_remote_code: bool = False) -> Any:
        """Load what turns examples into model inputs: a tokenizer (with a pad token and, for
        chat, a chat template), an image processor, or a processor of both."""

    def load_model(
        self, path: Path | str, labels: list[str] | None, config: Any, tokenizer: Any = None
    ) -> Any:
        """Load the model from a local folder or hub id, shaped for the task (a new head for
        ``labels``...), in fp32 on the CPU; the engine applies the method and the precision."""

    def validate(self, example: dict, location: str, config: Any) -> list[Problem]:
        """Check one example against the task's rules (roles, text, a label, images...);
        ``config`` is the job config or ``None`` (``tunewright validate`` without one). Return
        every problem; an empty list when the example is fine."""

    def label_set(self, examples: list[dict]) -> list[str] | None:
        """The label names of the training examples, in the order the head's outputs take them
        (``None``: the task has no labels)."""

    def tokenize(self, example: dict, tokenizer: Any, labels: list[str] | None = None) -> dict:
        """Turn a valid example into model inputs (``input_ids``, ``attention_mask``,
        ``labels``, ``pixel_values``...). Never truncates: the engine checks the length with
        ``num_tokens`` and reports an example that is too long before anything trains."""

    def collate(self, features: list[dict], tokenizer: Any) -> dict:
        """Pad a list of tokenized examples into a batch of tensors (dynamic padding)."""

    def metrics(self, model: Any, batches: Iterable[dict]) -> dict[str, float]:
        """Evaluate ``model`` on batches from :meth:`collate`; return the task's figures, ``loss``
        always, each named in :attr:`metric_directions`. ``model`` is anything whose
        ``model(**inputs)`` returns an object with ``.logits``: the edge parity gate passes an
        ONNX model through this same method."""


class TaskOptions(Protocol):
    """The optional members of a :class:`Task` (see its docstring)."""

    description: str
    default_model: str
    #: what the training progress line's rate counts per second (``"images"``); default ``"tok"``:
    #: the tokens of a step, or its examples for features without ``input_ids``
    progress_unit: str
    #: the registered task whose figures judge this task's exported model at the edge parity gate,
    #: where its own need more than the model (``dpo``'s rewards need the reference model, which
    #: a bundle does not keep): ``"chat"``; :meth:`parity_examples` turns its examples (held-out
    #: and calibration) into that task's. ``None``: no task judges it, and ``tunewright export``
    #: refuses its runs
    parity_task: str | None
    #: what ``training.max_forward_tokens: auto`` is, in median micro-batches (default 2: only an
    #: unusually large micro-batch runs in pieces). A task whose examples cost more activation
    #: memory than their tokens say asks for less (``dpo``: 0.5, each micro-batch in two pieces)
    auto_forward_batches: float

    def parity_examples(self, examples: list[dict]) -> list[dict]: ...

    def check_split(
        self,
        examples: list[dict],
        locations: list[str],
        *,
        split: str,
        reference_labels: list[str] | None,
    ) -> list[Problem]: ...

    def stratify_key(self, example: dict) -> str | None: ...

    def num_tokens(self, features: dict) -> int | None: ...

    def metric_for(self, labels: list[str] | None) -> str: ...

    def summarize(
        self,
        examples: list[dict],
        *,
        locations: list[str] | None = None,
        problems: Sequence[Problem] = (),
        config: Any = None,
    ) -> dict: ...

    def render_summary(self, summary: dict) -> list[str]: ...

    def loss(self, model: Any, batch: dict) -> tuple[Any, int]: ...


# -------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------


@runtime_checkable
class Method(Protocol):
    """A way to fine-tune: which parameters train and how they fold back (``register_methods``).

    ``config_class`` is a pydantic model for the method's own config section (or ``None``).

    Optional members: ``task_kinds`` (the task kinds it can wrap; ``None`` or absent: any, and
    :meth:`apply` refuses what it cannot do); ``description``; ``on_epoch(model, epoch)`` (called
    before the first step of every epoch, ``epoch`` from 0: gradual unfreezing);
    ``optimizer_parameters(model) -> list[Parameter]`` (the parameters the optimizer holds;
    default: every parameter with ``requires_grad`` right after :meth:`apply`).
    """

    config_class: Any
    #: a link to the paper or reference, shown by ``tunewright plugins``
    reference: str

    def apply(self, model: Any, settings: Any, task_kind: str) -> Any:
        """Return the model ready to train: frozen where it should be, new layers added."""

    def trainable_state(self, model: Any) -> dict[str, Any]:
        """The tensors that training changes, by name, small enough to send between federated
        sites; the same names every time for the same settings."""

    def load_trainable_state(self, model: Any, state: dict[str, Any]) -> None:
        """Put a state from :meth:`trainable_state` back into an applied model; refuse (a
        :class:`tunewright.UsageError`) a state whose names do not fit."""

    def save(self, model: Any, path: Path) -> None:
        """Write the trainable state to a folder (PEFT format where PEFT is used)."""

    def load(self, model: Any, path: Path, settings: Any, task_kind: str) -> Any:
        """Apply the method to a fresh base ``model`` and load what :meth:`save` wrote."""

    def merge(self, model: Any) -> Any:
        """Return a plain ``transformers`` model with the method folded in, for export."""


class MethodOptions(Protocol):
    """The optional members of a :class:`Method` (see its docstring)."""

    task_kinds: tuple[str, ...] | None
    description: str

    def on_epoch(self, model: Any, epoch: int) -> None: ...

    def optimizer_parameters(self, model: Any) -> list: ...


# -------------------------------------------------------------------------
# Training: trackers, runners, results
# -------------------------------------------------------------------------


@runtime_checkable
class Tracker(Protocol):
    """Where logged figures go (``register_trackers``). A tracker is made by its registered
    factory, ``factory(run)``, once per job (on the main process only) before the baseline
    evaluation, so that it sees the baseline's figures (step 0) and every logged step after;
    it is closed when the job ends, failed or not."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record the figures of one step: training lines carry ``loss``, ``learning_rate``,
        ``tokens_per_second``, ``epoch``; evaluation lines carry ``eval_<metric>``."""

    def close(self) -> None:
        """Flush and release; called once."""


class TrackerFactory(Protocol):
    """What ``register_trackers`` registers: ``factory(run) -> Tracker`` (a class whose
    constructor takes the run, or a function).

    On a resumed run (``tunewright train --resume``) the factory is called again, with
    ``run.resume_from`` set to the checkpoint the run continues from and ``run.start_step`` to its
    step: a tracker continues its record, never truncates it. What it logged for steps after
    ``run.start_step`` is logged again (those steps are trained again) and may be dropped; what it
    logged up to ``run.start_step``, the baseline included, stays (the baseline is not evaluated
    again). The built-in ``jsonl`` tracker keeps ``metrics.jsonl``'s lines up to ``start_step``.

    Optional member: ``check(config) -> list[str]`` (see :class:`TrackerFactoryOptions`).
    """

    def __call__(self, run: Run) -> Tracker: ...


class TrackerFactoryOptions(Protocol):
    """The optional members of a :class:`TrackerFactory`."""

    def check(self, config: Any) -> list[str] | None:
        """Check the tracker's own settings (a plugin config section, an environment variable)
        with the config check, before the model loads: return every problem as ``key: what is
        wrong (what is allowed)``; ``[]`` or ``None`` when all is well. ``config`` is the
        validated :class:`tunewright.JobConfig`."""


class Runner(Protocol):
    """What ``register_runners`` registers: ``runner(run) -> TrainResult``, the training part of
    a job. The built-in ``local`` runner is :func:`tunewright.train` as ``train(run)``.

    Optional member: ``check(config) -> list[str]`` (see :class:`RunnerOptions`).
    """

    def __call__(self, run: Run) -> TrainResult: ...


class RunnerOptions(Protocol):
    """The optional members of a :class:`Runner`."""

    def check(self, config: Any) -> list[str] | None:
        """Check the runner's own settings (its config section, the sites it needs...) with the
        config check, before the model loads; as :meth:`TrackerFactoryOptions.check`."""


class SectionOptions(Protocol):
    """The optional members of a config section (a :class:`tunewright.Section` that a method or
    ``register_config_sections`` registered)."""

    def check(self, config: Any) -> list[str] | None:
        """Rules across the section and the rest of the config (a key that only makes sense with
        a certain task, for instance), called on the validated section with the config check,
        before the model loads; as :meth:`TrackerFactoryOptions.check`. A section's own fields
        are checked by its pydantic schema."""


# -------------------------------------------------------------------------
# Graders
# -------------------------------------------------------------------------


@runtime_checkable
class Grader(Protocol):
    """One built grader: scores a model's answer to one item (``register_graders``).

    ``sample`` is what the model produced (``output_text``; ``choices``...), ``item`` the data
    line it answered (any fields: ``{{item.answer}}`` in a template reads one). Return a float in
    ``0..1`` (a ``score_model`` grader may return its ``range``); raise an exception with a
    sentence to mark the example as an error (a grader that failed, timed out or returned a value
    outside its range): the grading of the other examples goes on.
    """

    #: the grader's ``name`` in its config (a ``multi`` formula refers to it)
    name: str

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float: ...


@runtime_checkable
class GraderType(Protocol):
    """What ``register_graders`` registers: ``grader_type(spec, build) -> Grader``.

    ``spec`` is the grader's config (a dict with the hosted graders' fields: ``type``, ``name``,
    ``input``, ``reference``, ``operation``, ``evaluation_metric``, ``calculate_output``...);
    ``build(inner_spec) -> Grader`` builds a grader it contains (``multi``). Raise
    :class:`tunewright.ConfigError` naming the key for a bad spec.
    """

    def __call__(self, spec: Mapping[str, Any], build: Any) -> Grader: ...


@dataclass
class TrainResult:
    """What :func:`tunewright.train` and a runner hand back.

    ``metrics`` holds ``train_loss`` (mean over the steps trained) and, after a job, the final
    held-out figures; ``checkpoint`` is the last checkpoint folder written (``None`` when none
    was), which :func:`tunewright.train` takes as ``resume_from``.
    """

    run_dir: Path
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    train_tokens: int = 0
    train_seconds: float = 0.0
    checkpoint: Path | None = None


def _members(protocol: type) -> tuple[str, ...]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return tuple(sorted(names))


#: the optional members of each protocol, by protocol name (see :func:`optional`)
OPTIONAL: dict[str, tuple[str, ...]] = {
    "DatasetFormat": _members(DatasetFormatOptions),
    "Task": _members(TaskOptions),
    "Method": _members(MethodOptions),
    "Runner": _members(RunnerOptions),
    "TrackerFactory": _members(TrackerFactoryOptions),
    "Section": _members(SectionOptions),
}

__all__ = [
    "Problem",
    "ModelProvider",
    "DatasetFormat",
    "DatasetFormatOptions",
    "Task",
    "TaskOptions",
    "Method",
    "MethodOptions",
    "Tracker",
    "TrackerFactory",
    "TrackerFactoryOptions",
    "Runner",
    "RunnerOptions",
    "SectionOptions",
    "TrainResult",
    "Grader",
    "GraderType",
    "optional",
    "OPTIONAL",
]
