"""``tunewright validate`` and ``tunewright eval``: the data checks and metrics outside a job.

``validate`` runs the same checks a job runs before it trains: the task's rules and the
``validate_example`` hooks, then the task's tokenization of every valid example, whose length is
checked against ``data.max_length`` with a config, or against the model's context length without
one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import JobConfig
from .data import check_file, render_report, summarize, task_for_file
from .errors import DataError, UsageError
from .manager import PluginManager
from .models import resolve_model
from .types import Problem, Task, optional


@dataclass
class ValidationReport:
    path: Path
    task_name: str
    task: Any
    problems: list[Problem]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_dict(self) -> dict:
        def rows(severity: str) -> list[dict]:
            return [
                {"location": p.location, "message": p.message}
                for p in self.problems
                if p.severity == severity
            ]

        return {
            "path": str(self.path),
            "task": self.task_name,
            "ok": not self.errors,
            "errors": rows("error"),
            "excluded": rows("excluded"),
            "warnings": rows("warning"),
            "summary": self.summary,
        }

    def render(self) -> str:
        return f"task: {self.task_name}\n" + render_report(
            self.problems, {"data": self.summary}, self.task
        )


def context_length(model_path: Path | str, tokenizer: Any) -> int | None:
    """The longest input the model takes, in tokens: its config's position limit, else the
    tokenizer's ``model_max_length`` when that is a real number (transformers puts 1e30 there
    when it does not know)."""
    config_path = Path(model_path) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        for source in (config, config.get("text_config") or {}):
            for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
                if isinstance(source.get(key), int):
                    return source[key]
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**6 else None


def validate_file(
    path: Path,
    task_name: str | None,
    pm: PluginManager,
    *,
    config: JobConfig | None = None,
    model: str | None = None,
) -> ValidationReport:
    """Check every example of one file as training data for ``task_name`` (``None``: the task
    the file's format says its examples are for)."""
    registries = pm.registries
    data_format = config.data.format if config else "auto"
    if config is not None:
        task_name = config.task
    if task_name is None:
        task_name = task_for_file(path, registries, data_format)
        if task_name is None:
            raise UsageError(
                f"{path}: its format does not say which task its examples are for; "
                f"pass --task (registered: {', '.join(sorted(registries.kind('tasks')))})"
            )
        if task_name not in registries.kind("tasks"):
            raise UsageError(
                f"{path}: the examples are for task {task_name!r}, which no installed "
                "plugin registers; install its plugin or pass --task"
            )
    task = registries.get("tasks", task_name, key="--task")
    model_name = model or (config.model if config else optional(task, Task, "default_model"))
    tokenizer = None
    limit_name, max_length = "data.max_length", None
    if model_name:
        model_path, _ = resolve_model(model_name, registries, key="--model")
        tokenizer = task.load_tokenizer(
            model_path, trust_remote_code=bool(config and config.trust_remote_code)
        )
        if config is not None:
            max_length = config.data.max_length
        else:
            max_length = context_length(model_path, tokenizer)
            limit_name = f"the context length of {model_name}"
    checked = check_file(
        path,
        task_name,
        pm,
        config,
        data_format=data_format,
        split="train",
        tokenizer=tokenizer,
        max_length=max_length,
        limit=limit_name,
    )
    read, problems = checked.read, checked.problems
    if read.fatal is not None:
        raise DataError(str(read.fatal))
    usable = checked.usable()  # an example refused by a check is not counted, nor its tokens
    summary = (
        summarize(
            checked.examples,
            task,
            lengths=checked.lengths,
            config=config,
            locations=read.locations,
            problems=problems,
            usable=usable,
        )
        if checked.examples
        else {}
    )
    if read.format:
        summary["format"] = read.format
    return ValidationReport(path, task_name, task, problems, summary)


def evaluate_run(run_dir: Path, data_path: Path, pm: PluginManager) -> dict[str, float]:
    """The task's metrics of a tuned run on a data file, checked first like held-out data."""
    from .runs import load_run

    run = load_run(
        run_dir, pm=pm, merged=False
    )  # every method evaluates unmerged, prompt tuning too
    checked = check_file(
        data_path,
        run.task_name,
        pm,
        run.config,
        data_format=run.config.data.format,
        split="evaluation",
        reference_labels=run.labels,
        labels=run.labels,
        tokenizer=run.tokenizer,
        max_length=run.config.data.max_length,
    )
    if checked.read.fatal is not None:
        raise DataError(str(checked.read.fatal))
    features = checked.features
    errors = [p for p in checked.problems if p.severity == "error"]
    if errors:
        raise DataError("\n".join(str(p) for p in errors))
    features = [f for f in features if f is not None]
    if not features:
        raise DataError(f"{data_path}: no example left to evaluate on")
    size = run.config.training.batch_size
    batches = (
        run.task.collate(features[i : i + size], run.tokenizer)
        for i in range(0, len(features), size)
    )
    return run.task.metrics(run.model, batches)
