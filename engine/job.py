"""One job, top to bottom: config -> data -> model -> method -> baseline -> train -> eval -> run dir.

Everything that can be checked before the model loads is checked first (config, plugins, data),
so a typo or a broken line fails in seconds rather than halfway through a run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from transformers import set_seed

from .config import JobConfig
from .data import prepare_data
from .errors import UsageError
from .manager import PluginManager, plugin_summary
from .models import atomic_directory, resolve_model
from .precision import cast_frozen, prefer_eager_attention, resolve_precision
from .report import write_report
from .trainer import last_checkpoint
from .types import TrainResult


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


class Job:
    """A training job and the state the hooks see as ``run``."""

    def __init__(self, config: JobConfig, pm: PluginManager, *, resume: bool = False,
                 overwrite: bool = False, echo: Callable[[str], None] = _echo):
        self.config = config
        self.pm = pm
        self.resume = resume
        self.overwrite = overwrite
        self.echo = echo
        self.run_dir = Path(config.output)
        registries = pm.registries
        self.task = registries.get("tasks", config.task, key="task")
        self.method = registries.get("methods", config.method, key="method")
        self.method_settings = config.section(config.method)
        self.runner = registries.get("runners", config.runner, key="runner")
        self.model = None
        self.tokenizer = None
        self.labels: list[str] | None = None
        self.train_features: list[dict] = []
        self.validation_features: list[dict] = []
        self.test_features: list[dict] = []
        self.trackers: list[Any] = []
        self.precision = resolve_precision(config.training.precision)

    @property
    def primary_metric(self) -> tuple[str, bool]:
        metric_for = getattr(self.task, "metric_for", None)
        if metric_for is not None:
            return metric_for(self.labels)
        return self.task.primary_metric, self.task.greater_is_better

    # -- the steps -------------------------------------------------------------------------

    def check_run_dir(self) -> None:
        exists = self.run_dir.exists() and any(self.run_dir.iterdir())
        if self.resume:
            if last_checkpoint(self.run_dir) is None:
                raise UsageError(
                    f"output: {self.run_dir} has no checkpoint to resume from "
                    "(set training.save_steps to write checkpoints, or train without --resume)")
        elif exists:
            if not self.overwrite:
                raise UsageError(
                    f"output: {self.run_dir} exists already; pass --resume to continue it, "
                    "--overwrite to replace it, or choose another output")
            shutil.rmtree(self.run_dir)

    def prepare(self) -> None:
        """Load the tokenizer, read and validate every data file, then load the model."""
        config = self.config
        self.check_run_dir()
        path, registered = resolve_model(config.model, self.pm.registries)
        self.model_path = path
        self.tokenizer = self.task.load_tokenizer(path, trust_remote_code=config.trust_remote_code)
        self.data = prepare_data(config, self.pm, self.tokenizer)
        for problem in self.data.problems:
            if problem.severity == "warning":
                self.echo(str(problem))
        self.labels = self.task.label_set(self.data.train)
        self.write_run_files()
        self.echo(f"loading {config.model} for {config.task} with {config.method}")
        set_seed(config.seed)  # new heads and adapter weights are initialised from the seed
        model = self.task.load_model(path, self.labels, config, tokenizer=self.tokenizer)
        prefer_eager_attention(model, config.data.max_length)
        self.model = self.method.apply(model, self.method_settings, self.task.model_kind)
        if self.precision in ("bf16", "fp16"):
            cast_frozen(self.model, torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if torch.cuda.is_available():
            self.model.to("cuda")
        max_length = config.data.max_length

        def features(examples):
            return [self.task.tokenize(e, self.tokenizer, max_length, labels=self.labels) for e in examples]

        self.train_features = features(self.data.train)
        self.validation_features = features(self.data.validation)
        self.test_features = features(self.data.test)

    def write_run_files(self) -> None:
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        used = {
            "models": self.config.model, "tasks": self.config.task, "methods": self.config.method,
            "runners": self.config.runner,
        }
        summary = plugin_summary(self.pm)
        for plugin in summary:
            plugin["used"] = sorted(
                f"{kind}:{name}" for kind, name in used.items() if name in plugin["registered"].get(kind, []))
        write_json(run_dir / "plugins.json", summary)
        if not self.resume:
            write_jsonl(run_dir / "data" / "train.jsonl", self.data.train)
            write_jsonl(run_dir / "data" / "validation.jsonl", self.data.validation)
            write_jsonl(run_dir / "data" / "test.jsonl", self.data.test)
            write_json(run_dir / "labels.json", self.labels)
            self.tokenizer.save_pretrained(run_dir / "tokenizer")

    def evaluate(self, features: list[dict]) -> dict[str, float]:
        size = self.config.training.batch_size
        batches = (self.task.collate(features[i:i + size], self.tokenizer) for i in range(0, len(features), size))
        return self.task.metrics(self.model, batches)

    def run(self) -> TrainResult:
        self.prepare()
        start_step = 0
        if self.resume:
            from .trainer import checkpoint_step

            start_step = checkpoint_step(last_checkpoint(self.run_dir))
        trackers = self.pm.registries.kind("trackers")
        self.trackers = [trackers[name](run_dir=self.run_dir, config=self.config, start_step=start_step)
                         for name in self.config.trackers]
        metric, _ = self.primary_metric
        eval_path = self.run_dir / "eval.json"
        results: dict[str, Any] = {"split": "validation", "primary_metric": metric}
        if self.resume and eval_path.exists():
            results = json.loads(eval_path.read_text())
        elif self.validation_features:
            self.echo(f"baseline: evaluating {self.config.model} on {len(self.validation_features)} held-out examples")
            results["baseline"] = self.evaluate(self.validation_features)
            if self.test_features:
                results["test"] = {"baseline": self.evaluate(self.test_features)}
            write_json(eval_path, results)
            self.pm.hook.on_evaluate(run=self, step=0, metrics=results["baseline"])
            self.echo("baseline: " + format_metrics(results["baseline"]))
        self.pm.hook.on_train_begin(run=self)
        try:
            result = self.runner(self)
        finally:
            for tracker in self.trackers:
                tracker.close()
        if self.validation_features:
            results["final"] = self.evaluate(self.validation_features)
            self.echo("tuned:    " + format_metrics(results["final"]))
        if self.test_features:
            results.setdefault("test", {})["final"] = self.evaluate(self.test_features)
        results["train"] = {
            "global_step": result.global_step,
            "tokens": result.train_tokens,
            "seconds": round(result.train_seconds, 2),
            "tokens_per_second": result.train_tokens / result.train_seconds if result.train_seconds else 0.0,
            "precision": self.precision,
        }
        result.metrics = results.get("final", {})
        with atomic_directory(self.run_dir / "adapter") as staging:
            self.method.save(self.model, staging)
        write_json(eval_path, results)
        write_report(self.run_dir)
        self.pm.hook.on_train_end(run=self, result=result)
        return result


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
