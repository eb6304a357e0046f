"""The hooks a tunewright plugin can implement.

A plugin is a module or object whose functions carry ``@hookimpl`` (``from tunewright import
hookimpl``) and whose names match a hook below. It is found through the entry-point group
``tunewright``; the built-in plugins are found the same way.

Every hook is called through pluggy, which passes an implementation only the arguments it names:
hooks only ever gain arguments, so an implementation written against an older release keeps
working.

Registration hooks are called once per plugin manager, for one plugin at a time, with a
``register`` callback bound to that plugin. ``register`` checks the name (lowercase letters,
digits, ``-`` and ``_``, starting with a letter) and refuses a name that another plugin registered
already; the error names both plugins and their distributions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .config import JobConfig
    from .run import Run
    from .types import Problem, TrainResult

hookspec = pluggy.HookspecMarker("tunewright")
hookimpl = pluggy.HookimplMarker("tunewright")

#: ``register(name, obj)``: what a registration hook receives
Register = Callable[[str, Any], None]


# -------------------------------------------------------------------------
# Registration: called once when a plugin manager's registries are built.
# -------------------------------------------------------------------------


@hookspec
def register_models(register: Register) -> None:
    """Register pretrained models that a config can name in ``model:``.

    ``register(name, provider)``: ``provider`` is a :class:`tunewright.ModelProvider`; its
    ``resolve()`` returns a local Hugging Face folder (converting or unpacking on first use).
    A ``model:`` that is not a registered name is treated as a Hugging Face id or a local folder.
    """


@hookspec
def register_dataset_formats(register: Register) -> None:
    """Register readers that turn a data file (or folder) into examples.

    ``register(name, reader)``: ``reader`` is a :class:`tunewright.DatasetFormat`. Its
    ``suffixes`` say which files it reads (``directory = True``: it reads folders);
    ``read(path)`` yields ``(line_number, record)`` pairs and ``to_example(record)`` turns one
    record into an example or raises :class:`tunewright.DataError` saying what is wrong.
    """


@hookspec
def register_tasks(register: Register) -> None:
    """Register tasks that a config can name in ``task:``.

    ``register(name, task)``: ``task`` is a :class:`tunewright.Task`: it says what a valid
    example is, names its labels, loads the model and the tokenizer (or image processor) the task
    needs, tokenizes examples, collates batches and computes metrics, each with its direction.
    """


@hookspec
def register_methods(register: Register) -> None:
    """Register fine-tuning methods that a config can name in ``method:``.

    ``register(name, method)``: ``method`` is a :class:`tunewright.Method`. If the method has a
    ``config_class`` (a pydantic model), the config section named after the method (``lora:``,
    ``adapter:``...) is validated against it.
    """


@hookspec
def register_config_sections(register: Register) -> None:
    """Register a top-level config section that is not tied to a method.

    ``register(name, model_class)``: ``model_class`` is a pydantic model (subclass
    :class:`tunewright.Section`); the section named ``name`` in a config is validated against it
    with the same error messages as the core keys, and the validated object is available as
    ``config.section(name)`` (``None`` when the config has no such section). A section may have
    ``check(config) -> list[str]`` for rules across the config, run with the config check before
    anything loads (:class:`tunewright.SectionOptions`).
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register exporters that turn a tuned model into ONNX files (``tunewright export --exporter``).

    ``register(name, exporter)``: ``exporter`` is a :class:`tunewright.edge.Exporter`: its
    ``supports(model, task_kind)`` says whether it can export a model (merged, fp32, eval mode) of
    a task kind (:mod:`tunewright.kinds`), and ``export(model, preprocessor, task_kind, out_dir)``
    writes the files and returns a :class:`tunewright.edge.ExportedModel`. ``--exporter auto``
    picks the supporting exporter with the highest ``preference``.
    """


@hookspec
def register_quantizers(register: Register) -> None:
    """Register quantizers that an export can name in ``--quantize``.

    ``register(name, quantizer)``: ``quantizer`` is a :class:`tunewright.edge.Quantizer`: its
    ``supports(exported)`` says whether it applies to a :class:`tunewright.edge.ExportedModel`, and
    ``quantize(exported, out_dir, calibration)`` writes the rewritten model (``calibration`` holds
    model inputs built from the run's held-out examples). Every result passes the parity gate
    before it is shipped.
    """


@hookspec
def register_edge_runtimes(register: Register) -> None:
    """Register predictors that open exported bundles on a device (``tunewright edge run|bench|verify``,
    ``tunewright.edge.runtime.load_bundle``, and the parity gate at export time).

    ``register(name, predictor_class)``: ``predictor_class`` implements
    :class:`tunewright.edge.runtime.Predictor`. Its class attributes ``runtime`` and ``task_kind``
    say which bundles it opens (a manifest's ``runtime`` and ``task_kind``, as the exporter's
    :class:`tunewright.edge.ExportedModel` set them), and ``generates`` whether it produces token
    sequences; ``predictor_class(folder, manifest, threads=None)`` opens one bundle. Give a new
    task kind a runtime by registering a predictor for it beside the exporter that makes its bundles.

    The module implementing this hook runs on devices that have only ``tunewright[runtime]``: it
    must import neither torch nor transformers. When two plugins serve the same runtime and task
    kind, a third-party one is used over a built-in one; two third-party ones are an error that
    names both. Built-ins (plugin ``edge-runtimes``): ``text-classifier``, ``image-classifier``,
    ``generator`` (onnxruntime, ``causal_lm``) and ``genai-generator`` (onnxruntime-genai).
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register experiment trackers that a config can list in ``trackers:``.

    ``register(name, factory)``: ``factory(run)`` is called once per job, on the main process,
    with the :class:`tunewright.Run` (its ``run_dir``, ``config``, ``start_step``...), and returns
    a :class:`tunewright.Tracker`: ``log(step, metrics)`` for every logged step and every
    evaluation (``eval_<metric>`` keys, ``eval_stage`` baseline / training / final), and
    ``close()`` once at the end. The built-in ``jsonl`` tracker writes ``metrics.jsonl``.

    On ``tunewright train --resume`` the factory is called again with ``run.resume_from`` (the
    checkpoint the run continues from) and ``run.start_step`` (its step) set: the tracker appends
    to what it recorded, never truncates it; what it logged past ``start_step`` is logged again
    and may be dropped, the rest (the baseline included: it is not measured again) stays. A
    factory may have ``check(config) -> list[str]``, run with the config check before anything
    loads (:class:`tunewright.TrackerFactoryOptions`). 0.1.0's ``factory(run_dir, config)`` still
    works, with a :class:`tunewright.PluginDeprecationWarning`.
    """


@hookspec
def register_runners(register: Register) -> None:
    """Register runners that a config can name in ``runner:`` (default ``local``).

    ``register(name, runner)``: ``runner(run) -> TrainResult`` runs the training part of a job
    on a prepared :class:`tunewright.Run` whose baseline has been measured, and leaves the trained
    state in ``run.model``; the engine then measures the final figures and writes the run
    directory. It is written from public names: :func:`tunewright.train` (the built-in ``local``
    runner is ``train(run)``, which continues a ``--resume``d run from ``run.resume_from`` by
    itself), :func:`tunewright.evaluate`, :func:`tunewright.prepare_run`. A runner may have
    ``check(config) -> list[str]``, run with the config check before anything loads
    (:class:`tunewright.RunnerOptions`). 0.1.0's ``runner(job)`` still works, with a
    :class:`tunewright.PluginDeprecationWarning`.
    """


@hookspec
def register_graders(register: Register) -> None:
    """Register grader types that a grader config names in ``type:`` (``tunewright eval --grader``,
    the ``rft`` objective, a ``score_model`` or ``multi`` grader).

    ``register(name, grader_type)``: ``grader_type`` is a :class:`tunewright.GraderType`,
    ``grader_type(spec, build) -> Grader``, where ``spec`` is the grader's config (the hosted
    graders' fields: ``name``, ``input``, ``reference``, ``operation``...) and ``build(inner)``
    builds a grader it contains. The built :class:`tunewright.Grader`'s ``grade(sample, item)``
    returns a float, ``0..1``; an exception it raises marks that one example as an error and the
    others are still graded. Built-ins (plugin ``graders``): ``string_check``,
    ``text_similarity``, ``python`` (sandboxed: own process, no network, time and memory
    limits), ``score_model`` (a run or a bundle as judge) and ``multi`` (a formula).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``tunewright`` command line.

    ``cli`` is the top-level :class:`click.Group`; decorate functions with ``@cli.command()`` or
    call ``cli.add_command(...)``. Called once when the command line is built. The plugin
    manager of the invocation is the click context's object: take it with ``@click.pass_obj``
    rather than building another.
    """


# -------------------------------------------------------------------------
# Examples: called for every example of every data file, before training.
# -------------------------------------------------------------------------


@hookspec
def validate_example(
    example: dict, task: str, config: JobConfig | None, location: str
) -> list[Problem] | None:
    """Check one example before anything is trained, beside the task's own ``validate``.

    ``example`` is the record as the dataset format produced it, ``task`` the task name,
    ``config`` the validated job config (``None`` for ``tunewright validate`` without one) and
    ``location`` where it came from (``data/train.jsonl:17``). Return a list of
    :class:`tunewright.Problem` (``"error"``: nothing trains; ``"warning"``: reported;
    ``"excluded"``: the example is left out and the job goes on), or ``None``/``[]`` when the
    example is fine. Every implementation is called; the problems of all are reported together.
    """


@hookspec
def transform_example(
    example: dict, task: str, config: JobConfig | None, location: str
) -> dict | None:
    """Rewrite one valid example before it is tokenized (low-detail images, redaction...).

    ``location`` is where the example came from (``data/train.jsonl:17``: a path relative to the
    data file resolves against its folder). Return the new example, or ``None`` to leave it as it
    is; raise :class:`tunewright.DataError` to refuse it (reported at its location, before
    training). Implementations run in turn, each
    seeing the previous one's output, in pluggy's call order (``tryfirst``/``trylast`` apply).
    """


# -------------------------------------------------------------------------
# Lifecycle: called by a job on its main process, in this order.
# -------------------------------------------------------------------------


@hookspec
def on_train_begin(run: Run) -> None:
    """Called once per job, after the baseline evaluation and before the runner starts.
    ``run`` is the prepared :class:`tunewright.Run`."""


@hookspec
def on_step_end(run: Run, step: int, logs: dict) -> None:
    """Called at every logging step with the figures logged at that step (``loss``,
    ``learning_rate``, ``tokens_per_second``, ``epoch``) and after every evaluation (its
    ``eval_<metric>`` figures)."""


@hookspec
def on_evaluate(run: Run, step: int, metrics: dict, stage: str) -> None:
    """Called after every evaluation on the held-out data with the task's metrics, named as the
    task names them (the same names every time). ``stage`` is ``"baseline"`` (before training,
    ``step`` 0), ``"training"`` (every ``training.eval_steps``) or ``"final"`` (after training)."""


@hookspec
def on_checkpoint(run: Run, step: int, path: str) -> None:
    """Called after a checkpoint was written completely and renamed into place at ``path``."""


@hookspec
def on_train_end(run: Run, result: TrainResult) -> None:
    """Called once after training, the final evaluation and the run directory are written, with
    the :class:`tunewright.TrainResult`."""


# -------------------------------------------------------------------------
# Export: called by ``tunewright export`` (``tunewright.edge.export_run``) of a finished run.
# -------------------------------------------------------------------------


@hookspec
def on_export(run_dir: str, bundle: str, manifest: dict) -> str | None:
    """Called after the export of the finished run at ``run_dir`` passed its parity gate and its
    bundle was renamed into place at ``bundle``; ``manifest`` is the bundle's ``manifest.json``.
    Not called when the export fails (then no bundle is written). May return a line for the
    export's output. An exception is shown as a warning: the bundle stays, and the export
    succeeds."""
