"""``tunewright validate`` and ``tunewright eval``: the data checks and metrics outside a job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import JobConfig
from .data import check_examples, read_examples, render_report, summarize
from .errors import DataError
from .manager import PluginManager
from .models import resolve_model
from .types import Problem

# Which packaged model counts tokens when neither --model nor --config says.
DEFAULT_TOKENIZER = {"chat": "smollm2-135m-instruct", "classification": "minilm-l6"}


@dataclass
class ValidationReport:
    path: Path
    problems: list[Problem]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "ok": not self.errors,
            "errors": [{"location": p.location, "message": p.message} for p in self.errors],
            "warnings": [{"location": p.location, "message": p.message} for p in self.warnings],
            "summary": self.summary,
        }

    def render(self) -> str:
        return render_report(self.problems, self.summary)


def validate_file(path: Path, task_name: str, pm: PluginManager, *, config: JobConfig | None = None,
                  model: str | None = None) -> ValidationReport:
    registries = pm.registries
    task = registries.get("tasks", task_name, key="--task")
    model_name = model or (config.model if config else DEFAULT_TOKENIZER.get(task_name))
    tokenizer = None
    if model_name:
        model_path, _ = resolve_model(model_name, registries, key="--model")
        tokenizer = task.load_tokenizer(model_path)
    data_format = config.data.format if config else "auto"
    max_length = config.data.max_length if config else None
    examples, locations, problems = read_examples(path, registries, format=data_format)
    problems = list(problems) + check_examples(
        examples, locations, task_name, pm, config=config, tokenizer=tokenizer, max_length=max_length)
    summary = summarize(examples, task_name, tokenizer=tokenizer, config=config) if examples else {}
    return ValidationReport(path, problems, summary)


def evaluate_run(run_dir: Path, data_path: Path, pm: PluginManager) -> dict[str, float]:
    """The task's metrics of a tuned run on a data file, validated first like training data."""
    from .runs import load_run

    run = load_run(run_dir, pm=pm, merged=False)  # every method evaluates unmerged, prompt tuning too
    examples, locations, problems = read_examples(data_path, pm.registries, format=run.config.data.format)
    problems = list(problems) + check_examples(
        examples, locations, run.task_name, pm, config=run.config, tokenizer=run.tokenizer,
        max_length=run.config.data.max_length, reference_labels=run.labels,
        split_name="evaluation")
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError("\n".join(str(p) for p in errors))
    features = [run.task.tokenize(e, run.tokenizer, run.config.data.max_length, labels=run.labels) for e in examples]
    size = run.config.training.batch_size
    batches = (run.task.collate(features[i:i + size], run.tokenizer) for i in range(0, len(features), size))
    return run.task.metrics(run.model, batches)
