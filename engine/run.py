"""A job, top to bottom: config -> data -> model -> method -> baseline -> runner -> eval -> run dir.

::

    run_job(config, pm)
      prepare_run ─► check the run directory, tokenizer, data (every error at once), model, method
      evaluate    ─► baseline on the held-out data (step 0)
      runner(run) ─► the config's runner; the built-in ``local`` one is ``train(run)``
      evaluate    ─► final figures on the same held-out data
      finish      ─► adapter/, eval.json, report.png, on_train_end

Everything that can be checked before the model loads is checked first (config, plugins, data),
so a typo or a broken line fails in seconds rather than halfway through a run. A :class:`Run` is
what every lifecycle hook and runner receives; :func:`prepare_run`, :func:`evaluate` and
:func:`tunewright.train` are public so that a runner (a federated one...) is written from them.

Under ``torchrun`` (or ``accelerate launch``) every process prepares the same run; only the main
process writes the run directory, evaluates, logs and prints.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checkpoints import checkpoint_step, last_checkpoint
from .config import JobConfig
from .data import PreparedData, Split, prepare_data
from .errors import ConfigError, UsageError
from .manager import PluginManager, plugin_summary
from .metrics import metric_direction, primary_metric
from .models import atomic_directory, resolve_model
from .report import write_report
from .types import Method, Task, TrainResult, optional

#: the file that marks a folder as a run directory: ``--overwrite`` replaces only such a folder
RUN_MARKER = ".tunewright-run"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Run:
    """A prepared job: what lifecycle hooks, runners and trackers receive.

    ``model`` is the model with the method applied (on its device, frozen parts in the training
    precision); ``tokenizer`` is what the task's ``load_tokenizer`` returned (a tokenizer, an
    image processor or a processor); the ``*_features`` are the task's tokenized examples of each
    split and ``data`` holds the examples themselves with where each came from. ``trackers`` are
    filled by :func:`run_job` on the main process. ``resume_from`` is the checkpoint a resumed run
    continues from (``None`` for a new run) and ``start_step`` its step: :func:`tunewright.train`
    continues from it by itself, and a tracker keeps what it recorded up to ``start_step``.
    ``is_main_process`` is ``False`` on the other ranks of a ``torchrun`` job, which neither write
    nor print.
    """

    config: JobConfig
    run_dir: Path
    pm: PluginManager
    task_name: str
    task: Task
    method_name: str
    method: Method
    method_settings: Any
    model: Any
    tokenizer: Any
    labels: list[str] | None
    data: PreparedData
    precision: str
    accelerator: Any
    resume: bool = False
    resume_from: Path | None = None
    start_step: int = 0
    #: set once :func:`tunewright.train` has continued from ``resume_from``
    resumed: bool = False
    trackers: list[Any] = field(default_factory=list)
    echo: Callable[[str], None] = _stderr

    @property
    def train_features(self) -> list[dict]:
        return self.data.train.features

    @property
    def validation_features(self) -> list[dict]:
        return self.data.validation.features

    @property
    def test_features(self) -> list[dict]:
        return self.data.test.features

    @property
    def is_main_process(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def primary_metric(self) -> tuple[str, bool]:
        """``(name, greater_is_better)`` of the metric early stopping and reports watch."""
        name, direction = primary_metric(self.task, self.labels, task_name=self.task_name)
        return name, direction == "max"

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Hand one step's figures to every tracker and to ``on_step_end`` (main process only)."""
        if not self.is_main_process:
            return
        for tracker in self.trackers:
            tracker.log(step, metrics)
        self.pm.hook.on_step_end(run=self, step=step, logs=metrics)

    def say(self, message: str) -> None:
        """A progress line, printed once (by the main process)."""
        if self.is_main_process:
            self.echo(message)


def metric_greater_is_better(
    task: Task, task_name: str, metric: str, *, key: str = "metric"
) -> bool:
    """Whether a larger ``metric`` is better, as the task says; a metric the task does not report
    is a :class:`tunewright.ConfigError` at ``key`` naming the ones it does
    (:func:`tunewright.metric_direction`)."""
    return metric_direction(task, metric, task_name=task_name, key=key) == "max"


# ---------------------------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, key: str = "output") -> None:
    """Refuse to start where a run would lose the user's files.

    A folder that exists and is not empty is used only with ``--resume`` (it must then hold a
    checkpoint) or ``--overwrite``, and ``--overwrite`` replaces only a folder marked as a run
    directory (:data:`RUN_MARKER`): never the current directory, a parent of it, or a folder that
    holds anything else.
    """
    run_dir = Path(run_dir)
    if resume:
        if last_checkpoint(run_dir) is None:
            raise UsageError(
                f"{key}: {run_dir} has no checkpoint to resume from (set "
                "training.save_steps to write checkpoints, or train without --resume)"
            )
        return
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UsageError(f"{key}: {run_dir} is a file; choose a folder for the run")
    if not any(run_dir.iterdir()):
        return
    marked = (run_dir / RUN_MARKER).is_file()
    if not overwrite:
        hint = (
            "pass --resume to continue it, --overwrite to replace it, or choose another output"
            if marked
            else "it is not a tunewright run directory, so nothing will replace it; "
            "choose a new or empty folder"
        )
        raise UsageError(f"{key}: {run_dir} exists and is not empty; {hint}")
    resolved = run_dir.resolve()
    here = Path.cwd().resolve()
    holds_here = resolved == here or resolved in here.parents
    if not marked or holds_here:
        raise UsageError(
            f"{key}: --overwrite replaces only a run directory (a folder with {RUN_MARKER} that "
            f"tunewright made), and {run_dir} is not one{' (it holds the current directory)' if holds_here else ''}; "
            "nothing was deleted: choose a new or empty folder"
        )
    shutil.rmtree(run_dir)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _write_run_files(run: Run) -> None:
    run_dir = run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text(
        "a tunewright run directory; tunewright train --overwrite may replace it\n"
    )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
    used = {
        "models": run.config.model,
        "tasks": run.task_name,
        "methods": run.method_name,
        "runners": run.config.runner,
    }
    summary = plugin_summary(run.pm)
    for plugin in summary:
        plugin["used"] = sorted(
            f"{kind}:{name}"
            for kind, name in used.items()
            if name in plugin["registered"].get(kind, [])
        )
    _write_json(run_dir / "plugins.json", summary)
    if not run.resume:
        for name in ("train", "validation", "test"):
            _write_jsonl(run_dir / "data" / f"{name}.jsonl", run.data.split(name).examples)
        _write_json(run_dir / "labels.json", run.labels)
        run.tokenizer.save_pretrained(run_dir / "tokenizer")


# ---------------------------------------------------------------------------------------------
# Preparing, evaluating, running
# ---------------------------------------------------------------------------------------------


def prepare_run(
    config: JobConfig,
    pm: PluginManager,
    *,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    run_dir: str | Path | None = None,
    labels: list[str] | None = None,
    with_data: bool = True,
) -> Run:
    """Check the run directory, load the tokenizer, prepare the data (every data error raised at
    once, before the model loads), load the model, apply the method and cast for the precision.

    ``run_dir`` overrides ``config.output`` (a federated site's own folder, for instance).
    ``labels`` fixes the label set (the head's outputs, in order) instead of taking it from the
    training data: every site of a federation shares the server's; an example whose label is not
    among them is an error. ``with_data=False`` reads no data at all (a federated server without
    data of its own): the splits are empty. The main process writes the run directory's files;
    nothing is trained yet.
    """
    import torch
    from accelerate import Accelerator
    from transformers import set_seed

    from .attention import prefer_cpu_attention
    from .precision import cast_frozen, enable_gradient_checkpointing, resolve_precision

    echo = echo or _stderr
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    run_dir = Path(run_dir if run_dir is not None else config.output)
    registries = pm.registries
    task = registries.get("tasks", config.task, key="task")
    method = registries.get("methods", config.method, key="method")
    kinds_supported = optional(method, Method, "task_kinds")
    if kinds_supported is not None and task.model_kind not in kinds_supported:
        raise UsageError(
            f"method: {config.method!r} cannot tune a {task.model_kind} model (task "
            f"{config.task!r}); it supports {', '.join(kinds_supported)}"
        )
    precision = resolve_precision(config.training.precision)
    accelerator = Accelerator(
        mixed_precision="fp16" if precision == "fp16" and torch.cuda.is_available() else "no",
        cpu=not torch.cuda.is_available(),
    )
    main = accelerator.is_main_process
    if config.training.early_stopping and config.training.early_stopping.metric:
        metric_greater_is_better(
            task,
            config.task,
            config.training.early_stopping.metric,
            key="training.early_stopping.metric",
        )
    if main:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    # A packaged model is converted into the cache once: by the main process first, then by each
    # node's local main (a node whose cache is not shared with the main's), then the rest read it.
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        path, _ = resolve_model(config.model, registries)
    tokenizer = task.load_tokenizer(path, trust_remote_code=config.trust_remote_code)
    data = (
        prepare_data(config, pm, tokenizer, labels=labels)
        if with_data
        else PreparedData(Split(), Split(), Split(), labels, [], {})
    )
    labels = data.labels
    resume_from = last_checkpoint(run_dir) if resume else None
    run = Run(
        config=config,
        run_dir=run_dir,
        pm=pm,
        task_name=config.task,
        task=task,
        method_name=config.method,
        method=method,
        method_settings=config.section(config.method),
        model=None,
        tokenizer=tokenizer,
        labels=labels,
        data=data,
        precision=precision,
        accelerator=accelerator,
        resume=resume,
        resume_from=resume_from,
        start_step=checkpoint_step(resume_from),
        echo=echo,
    )
    for problem in data.problems:
        if problem.severity != "error":
            run.say(str(problem))
    if main:
        _write_run_files(run)
    accelerator.wait_for_everyone()
    run.say(f"loading {config.model} for {config.task} with {config.method}")
    set_seed(config.seed)  # new heads and adapter weights are initialised from the seed
    model = task.load_model(path, labels, config, tokenizer=tokenizer)
    prefer_cpu_attention(model, config.data.max_length)
    if config.training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = method.apply(model, run.method_settings, task.model_kind)
    if precision in ("bf16", "fp16"):
        cast_frozen(model, torch.bfloat16 if precision == "bf16" else torch.float16)
    run.model = model.to(accelerator.device)
    return run


def evaluate(
    run: Run,
    features: list[dict] | None = None,
    *,
    step: int | None = None,
    stage: str = "training",
) -> dict[str, float]:
    """The task's metrics of ``run.model`` on ``features`` (default: the validation features).

    With ``step``, the figures are also logged (``eval_<metric>``) and ``on_evaluate`` fires with
    ``stage`` (``"baseline"``, ``"training"`` or ``"final"``). Other ranks of a distributed job
    return ``{}`` without evaluating: the main process evaluates once.
    """
    if not run.is_main_process:
        return {}
    features = run.validation_features if features is None else features
    size = run.config.training.batch_size
    batches = (
        run.task.collate(features[i : i + size], run.tokenizer)
        for i in range(0, len(features), size)
    )
    metrics = run.task.metrics(run.model, batches)
    if step is not None:
        run.log(step, {**{f"eval_{k}": v for k, v in metrics.items()}, "eval_stage": stage})
        run.pm.hook.on_evaluate(run=run, step=step, metrics=dict(metrics), stage=stage)
    return metrics


def run_job(
    config: JobConfig,
    pm: PluginManager,
    *,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
    with_data: bool = True,
) -> TrainResult:
    """Prepare, measure the baseline, run the config's runner, measure again and write the run.

    ``labels`` and ``with_data`` go to :func:`prepare_run` (a federated server without data of
    its own: no baseline or final evaluation, the runner's figures stand)."""
    run = prepare_run(
        config,
        pm,
        resume=resume,
        overwrite=overwrite,
        echo=echo,
        labels=labels,
        with_data=with_data,
    )
    runner = pm.registries.get("runners", config.runner, key="runner")
    eval_path = run.run_dir / "eval.json"
    metric, _ = run.primary_metric
    results: dict[str, Any] = {"split": "validation", "primary_metric": metric}
    if run.is_main_process:
        factories = pm.registries.kind("trackers")
        run.trackers = [factories[name](run) for name in config.trackers]
    try:
        if resume and eval_path.exists():
            results = json.loads(eval_path.read_text())
        elif run.validation_features and run.is_main_process:
            run.say(
                f"baseline: evaluating {config.model} on {len(run.validation_features)} held-out examples"
            )
            results["baseline"] = evaluate(run, step=0, stage="baseline")
            if run.test_features:
                results["test"] = {"baseline": evaluate(run, run.test_features)}
            _write_json(eval_path, results)
            run.say("baseline: " + format_metrics(results["baseline"]))
        watched = config.training.early_stopping.metric if config.training.early_stopping else None
        if watched and "baseline" in results and watched not in results["baseline"]:
            # the task knows the name, but not for these labels (mse of class labels...): say so
            # before a step is trained rather than at the first evaluation
            raise ConfigError(
                f"training.early_stopping.metric: task {config.task!r} reports no {watched!r} "
                f"for these labels; it reports {', '.join(sorted(results['baseline']))}"
            )
        if run.is_main_process:
            pm.hook.on_train_begin(run=run)
        result = runner(run)
        if run.is_main_process and run.validation_features:
            results["final"] = evaluate(run, step=result.global_step, stage="final")
            run.say("tuned:    " + format_metrics(results["final"]))
        if run.is_main_process and run.test_features:
            results.setdefault("test", {})["final"] = evaluate(run, run.test_features)
    finally:
        for tracker in run.trackers:
            tracker.close()
    result.metrics = {**result.metrics, **results.get("final", {})}
    if run.is_main_process:
        results["train"] = {
            "global_step": result.global_step,
            "tokens": result.train_tokens,
            "seconds": round(result.train_seconds, 2),
            "tokens_per_second": result.train_tokens / result.train_seconds
            if result.train_seconds
            else 0.0,
            "precision": run.precision,
        }
        with atomic_directory(run.run_dir / "adapter") as staging:
            run.method.save(run.model, staging)
        _write_json(eval_path, results)
        write_report(run.run_dir)
        pm.hook.on_train_end(run=run, result=result)
    run.accelerator.wait_for_everyone()
    return result


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


__all__ = [
    "Run",
    "prepare_run",
    "evaluate",
    "run_job",
    "check_run_dir",
    "RUN_MARKER",
    "metric_greater_is_better",
    "format_metrics",
]
