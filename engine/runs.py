"""Reading a finished run back: the tuned model, merged, with its tokenizer and held-out data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import JobConfig, load_config
from .errors import UsageError
from .manager import PluginManager, get_plugin_manager
from .models import resolve_model


@dataclass
class LoadedRun:
    """A finished run read back by :func:`load_run`: its resolved ``config``, the tuned ``model``
    (merged into a plain transformers model unless ``merged=False``, fp32, eval mode), the
    ``tokenizer`` it trained with, its ``task``, ``labels``, the held-out ``validation`` and
    ``test`` examples it kept, and its ``eval.json``."""

    run_dir: Path
    config: JobConfig
    model: Any  # plain transformers model, method merged, fp32, eval mode
    tokenizer: Any
    task_name: str
    task: Any
    labels: list[str] | None
    validation: list[dict]
    test: list[dict]
    eval: dict = field(default_factory=dict)

    @property
    def base_model(self) -> str:
        return self.config.model

    @property
    def method(self) -> str:
        return self.config.method


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def read_run_config(run_dir: Path, pm: PluginManager) -> JobConfig:
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UsageError(
            f"{run_dir}: not a run directory (no config.yaml); pass the output folder of a training run"
        )
    return load_config(
        yaml.safe_load(path.read_text(encoding="utf-8")), pm.registries, source=str(path)
    )


def load_run(
    run_dir: str | Path, *, merged: bool = True, pm: PluginManager | None = None
) -> LoadedRun:
    """Load the tuned model of a run. ``merged=False`` keeps the method's wrapper (PEFT...)."""
    run_dir = Path(run_dir)
    pm = pm or get_plugin_manager()
    config = read_run_config(run_dir, pm)
    if not (run_dir / "adapter").is_dir():
        raise UsageError(
            f"{run_dir}: the run has no adapter/ folder: it did not finish (resume it with --resume)"
        )
    registries = pm.registries
    task = registries.get("tasks", config.task, key="task")
    method = registries.get("methods", config.method, key="method")
    path, _ = resolve_model(config.model, registries)
    tokenizer_dir = run_dir / "tokenizer"
    tokenizer = task.load_tokenizer(
        tokenizer_dir if tokenizer_dir.is_dir() else path,
        trust_remote_code=config.trust_remote_code,
    )
    labels_path = run_dir / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else None
    base = task.load_model(path, labels, config, tokenizer=tokenizer)
    model = method.load(base, run_dir / "adapter", config.section(config.method), task.model_kind)
    if merged:
        model = method.merge(model)
    model.float().eval()
    eval_path = run_dir / "eval.json"
    return LoadedRun(
        run_dir=run_dir,
        config=config,
        model=model,
        tokenizer=tokenizer,
        task_name=config.task,
        task=task,
        labels=labels,
        validation=read_jsonl(run_dir / "data" / "validation.jsonl"),
        test=read_jsonl(run_dir / "data" / "test.jsonl"),
        eval=json.loads(eval_path.read_text()) if eval_path.exists() else {},
    )
