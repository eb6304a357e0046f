"""The hooks a tunewright plugin can implement.

A plugin is a module or object whose functions carry ``@hookimpl`` (``from tunewright import
hookimpl``) and whose names match a hook below. It is found through the entry-point group
``tunewright``; the built-in plugins are found the same way.

Hooks only ever gain arguments: pluggy passes an implementation only the arguments it names, so an
implementation written against an older release keeps working.

Registration hooks are called once per plugin manager, each with a ``register`` callback bound to
the calling plugin. ``register`` checks the name (lowercase letters, digits, ``-`` and ``_``,
starting with a letter) and refuses a name that another plugin registered already; the error
names both plugins and their distributions.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("tunewright")
hookimpl = pluggy.HookimplMarker("tunewright")


# -------------------------------------------------------------------------
# Registration: called once when a plugin manager's registries are built.
# -------------------------------------------------------------------------


@hookspec
def register_models(register: Callable[..., None]) -> None:
    """Register pretrained models that a config can name in ``model:``.

    ``register(name, provider)``: ``provider`` is a :class:`tunewright.ModelProvider`; its
    ``resolve()`` returns a local Hugging Face folder (converting or unpacking on first use).
    A ``model:`` that is not a registered name is treated as a Hugging Face id or a local folder.
    """


@hookspec
def register_dataset_formats(register: Callable[..., None]) -> None:
    """Register readers that turn a data file into examples.

    ``register(name, reader)``: ``reader`` is a :class:`tunewright.DatasetFormat`. Its
    ``suffixes`` say which files it reads; ``read(path)`` yields ``(line_number, record)`` pairs
    and ``to_example(record)`` turns one record into the task's example dictionary or raises
    :class:`tunewright.DataError` saying what is wrong.
    """


@hookspec
def register_tasks(register: Callable[..., None]) -> None:
    """Register tasks that a config can name in ``task:``.

    ``register(name, task)``: ``task`` is a :class:`tunewright.Task`: it loads the model class
    the task needs, tokenizes examples, collates batches and computes metrics.
    """


@hookspec
def register_methods(register: Callable[..., None]) -> None:
    """Register fine-tuning methods that a config can name in ``method:``.

    ``register(name, method)``: ``method`` is a :class:`tunewright.Method`. If the method has a
    ``config_class`` (a pydantic model), the config section named after the method (``lora:``,
    ``adapter:``...) is validated against it.
    """


@hookspec
def register_config_sections(register: Callable[..., None]) -> None:
    """Register a top-level config section that is not tied to a method.

    ``register(name, model_class)``: ``model_class`` is a pydantic model; the section named
    ``name`` in a config is validated against it with the same error messages as the core keys,
    and the validated object is passed to hooks as ``config.sections[name]``.
    """


@hookspec
def register_exporters(register: Callable[..., None]) -> None:
    """Register exporters that turn a tuned model into ONNX files (``tunewright export --exporter``).

    ``register(name, exporter)``: ``exporter`` is a :class:`tunewright.edge.Exporter`: its
    ``supports(model, task_kind)`` says whether it can export a model (merged, fp32, eval mode) for
    ``"sequence_classification"``, ``"causal_lm"`` or ``"image_classification"``, and
    ``export(model, preprocessor, task_kind, out_dir)`` writes the files and returns a
    :class:`tunewright.edge.ExportedModel`. ``--exporter auto`` picks the supporting exporter with
    the highest ``preference``. Built-ins: ``genai``, ``optimum``, ``torch``.
    """


@hookspec
def register_quantizers(register: Callable[..., None]) -> None:
    """Register quantizers that an export can name in ``--quantize``.

    ``register(name, quantizer)``: ``quantizer`` is a :class:`tunewright.edge.Quantizer`: its
    ``supports(exported)`` says whether it applies to a :class:`tunewright.edge.ExportedModel`, and
    ``quantize(exported, out_dir, calibration)`` writes the rewritten model (``calibration`` holds
    model inputs built from the run's held-out examples). Every result passes the parity gate
    before it is shipped; ``--quantize auto`` tries those with ``auto_candidate`` set and keeps the
    fastest that passes. Built-ins: ``none``, ``fp16``, ``int8``, ``int8-static``, ``int8-block``,
    ``int4``.
    """


@hookspec
def register_trackers(register: Callable[..., None]) -> None:
    """Register experiment trackers that a config can list in ``trackers:``.

    ``register(name, factory)``: ``factory(run_dir, config)`` returns an object with
    ``log(step, metrics)`` and ``close()``. The built-in ``jsonl`` tracker writes
    ``metrics.jsonl``.
    """


@hookspec
def register_runners(register: Callable[..., None]) -> None:
    """Register runners that a config can name in ``runner:`` (default ``local``).

    ``register(name, runner)``: ``runner(job) -> TrainResult`` runs the training part of a job;
    a federated runner trains on every site and aggregates the trainable state between rounds.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``tunewright`` command line.

    ``cli`` is the top-level :class:`click.Group`; decorate functions with ``@cli.command()``.
    Called once when the command line is built.
    """


# -------------------------------------------------------------------------
# Examples: called for every example of every data file, before training.
# -------------------------------------------------------------------------


@hookspec
def validate_example(example: dict, task: str, config: Any, location: str) -> list | None:
    """Check one example before anything is trained.

    ``example`` is the record as the dataset format produced it, ``task`` the task name,
    ``config`` the validated job config (``None`` for ``tunewright validate`` without one) and
    ``location`` where it came from (``data/train.jsonl:17``). Return a list of
    :class:`tunewright.Problem` (errors or warnings), or ``None``/``[]`` when the example is fine.
    Every implementation is called; the problems of all are reported together.
    """


@hookspec
def transform_example(example: dict, task: str, config: Any) -> dict | None:
    """Rewrite one valid example before it is tokenized (low detail images, redaction...).

    Return the new example, or ``None`` to leave it as it is. Implementations run in turn, each
    seeing the previous one's output, in pluggy's call order (``tryfirst``/``trylast`` apply).
    """


# -------------------------------------------------------------------------
# Lifecycle: called by the trainer of a job, in this order.
# -------------------------------------------------------------------------


@hookspec
def on_train_begin(run: Any) -> None:
    """Called once before the first training step. ``run`` is the :class:`tunewright.Run`
    (its ``config``, ``run_dir``, ``model`` and ``method``)."""


@hookspec
def on_step_end(run: Any, step: int, logs: dict) -> None:
    """Called at every logging step with the figures logged at that step (``loss``,
    ``learning_rate``, ``tokens_per_second``...)."""


@hookspec
def on_evaluate(run: Any, step: int, metrics: dict) -> None:
    """Called after every evaluation with its metrics; ``step`` is 0 for the baseline."""


@hookspec
def on_checkpoint(run: Any, step: int, path: str) -> None:
    """Called after a checkpoint was written completely and renamed into place at ``path``."""


@hookspec
def on_train_end(run: Any, result: Any) -> None:
    """Called once after training and the final evaluation, with the
    :class:`tunewright.TrainResult`."""
