"""Grading what a tuned run or a bundle answers (``tunewright eval RUN_OR_BUNDLE --grader``).

A grader config (YAML) names a registered grader type in ``type:``; the registered
:class:`tunewright.GraderType` builds it. Each data line is an *item*; its prompt is
``input.messages`` (the hosted format), ``messages`` without a trailing assistant turn, or
``input`` as a string. The model's answer is the *sample* (``output_text``). A grader that fails on
one example marks that example as an error with its sentence; the rest are still graded.

Bundles are answered by the predictor registered for their runtime (``register_edge_runtimes``),
so what is graded is the deployed artifact, without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import kinds
from .config import read_yaml
from .errors import ConfigError, DataError, UsageError
from .manager import PluginManager
from .types import Grader

Sampler = Callable[[list[dict]], str]


def build_grader(spec: Any, pm: PluginManager, *, where: str = "grader") -> Grader:
    """Build the grader a config describes, through the registered grader types."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a grader is a mapping with a 'type' key, not {spec!r}")
    kind = spec.get("type")
    factory = pm.registries.get("graders", str(kind), key=f"{where}.type")
    return factory(dict(spec), lambda inner: build_grader(inner, pm, where=f"{where}.graders"))


def read_grader(path: str | Path, pm: PluginManager) -> Grader:
    return build_grader(read_yaml(str(path)), pm, where=str(path))


def prompt_messages(item: Mapping[str, Any], location: str) -> list[dict]:
    """The chat messages an item asks the model to answer."""
    source = item.get("input")
    if isinstance(source, Mapping):
        source = source.get("messages")
    elif isinstance(source, str):
        return [{"role": "user", "content": source}]
    if source is None:
        source = item.get("messages")
    if not isinstance(source, list) or not source:
        raise DataError(
            f"{location}: no prompt: an item needs input.messages, messages or input (a string)"
        )
    messages = [dict(m) for m in source]
    while messages and messages[-1].get("role") == "assistant":
        messages.pop()
    if not messages:
        raise DataError(f"{location}: the messages hold no turn before the assistant's answer")
    return messages


@dataclass
class GradeReport:
    """Grades of one model on every item: ``grades[i]`` is ``None`` where ``errors[i]`` says why."""

    outputs: list[str]
    grades: list[float | None]
    errors: list[str | None]
    locations: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def graded(self) -> list[float]:
        return [g for g in self.grades if g is not None]

    def summary(self, worst: int = 3) -> dict[str, Any]:
        graded = self.graded
        mean = sum(graded) / len(graded) if graded else float("nan")
        std = (
            math.sqrt(sum((g - mean) ** 2 for g in graded) / len(graded))
            if graded
            else float("nan")
        )
        order = sorted(
            range(len(self.grades)),
            key=lambda i: -1.0 if self.grades[i] is None else float(self.grades[i] or 0.0),
        )
        return {
            "mean": mean,
            "std": std,
            "count": len(self.grades),
            "graded": len(graded),
            "errors": sum(e is not None for e in self.errors),
            "worst": [
                {
                    "location": self.locations[i],
                    "grade": self.grades[i],
                    "output": self.outputs[i],
                    **({"error": self.errors[i]} if self.errors[i] else {}),
                }
                for i in order[:worst]
            ],
        }


def grade_items(
    grader: Grader, outputs: list[str], items: list[dict], locations: list[str]
) -> GradeReport:
    """Grade each output against its item; a grader's exception is that example's error."""
    grades: list[float | None] = []
    errors: list[str | None] = []
    for output, item in zip(outputs, items, strict=True):
        try:
            value = float(grader.grade({"output_text": output, "choices": [output]}, item))
            if math.isnan(value):
                raise ValueError("the grade is NaN")
            grades.append(value)
            errors.append(None)
        except Exception as exc:  # one example's failure, reported with it
            grades.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return GradeReport(list(outputs), grades, errors, list(locations))


def is_bundle(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def open_sampler(
    path: str | Path,
    pm: PluginManager,
    *,
    baseline: bool = False,
    max_new_tokens: int = 64,
) -> Sampler:
    """A function answering chat messages with the model of a run (its base model when
    ``baseline``) or of a bundle (through its registered edge runtime, without torch). Greedy."""
    path = Path(path)
    if is_bundle(path):
        if baseline:
            raise UsageError(f"{path}: a bundle holds no baseline; pass --baseline BUNDLE_OR_RUN")
        return _bundle_sampler(path, pm, max_new_tokens)
    if not (path / "config.yaml").is_file():
        raise UsageError(
            f"{path}: neither a run directory (config.yaml) nor a bundle (manifest.json)"
        )
    task_name = str((read_yaml(path / "config.yaml") or {}).get("task"))
    kind = pm.registries.get("tasks", task_name, key="task").model_kind
    if kind != kinds.CAUSAL_LM:
        raise UsageError(
            f"{path}: --grader grades generated text, and this run's task {task_name!r} "
            f"({kind}) does not generate (allowed: a run of a {kinds.CAUSAL_LM} task, or a "
            f"generating bundle); `tunewright eval {path} --data FILE` gives its task's metrics"
        )
    return _run_sampler(path, pm, baseline, max_new_tokens)


def _bundle_sampler(path: Path, pm: PluginManager, max_new_tokens: int) -> Sampler:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    runtime, kind = manifest.get("runtime"), manifest.get("task_kind")
    entries = pm.registries.edge_runtimes
    matches = [cls for cls in entries.values() if cls.runtime == runtime and cls.task_kind == kind]
    if not matches:
        raise UsageError(
            f"{path}: no edge runtime registered for runtime {runtime!r} and task kind {kind!r}"
        )
    if not matches[-1].generates:
        raise UsageError(
            f"{path}: --grader grades generated text, and this bundle ({kind}) does not generate "
            f"(allowed: a generating bundle, or a run of a {kinds.CAUSAL_LM} task)"
        )
    predictor = matches[-1](path, manifest)

    def answer(messages: list[dict]) -> str:
        return str(predictor.generate(messages, max_new_tokens=max_new_tokens)).strip()

    return answer


def _run_sampler(path: Path, pm: PluginManager, baseline: bool, max_new_tokens: int) -> Sampler:
    import torch

    from .runs import load_run

    if baseline:
        model, tokenizer = _base_model(path, pm)
    else:
        run = load_run(path, pm=pm)
        model, tokenizer = run.model, run.tokenizer

    def answer(messages: list[dict]) -> str:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        inputs = torch.tensor([list(ids)])
        with torch.inference_mode():
            out = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return str(tokenizer.decode(out[0, inputs.shape[1] :], skip_special_tokens=True)).strip()

    return answer


def _base_model(run_dir: Path, pm: PluginManager) -> tuple[Any, Any]:
    """The run's base model, untuned, with the run's tokenizer."""
    from .models import resolve_model
    from .runs import read_run_config

    config = read_run_config(run_dir, pm)
    task = pm.registries.get("tasks", config.task, key="task")
    path, _ = resolve_model(config.model, pm.registries)
    tokenizer_dir = run_dir / "tokenizer"
    tokenizer = task.load_tokenizer(
        tokenizer_dir if tokenizer_dir.is_dir() else path,
        trust_remote_code=config.trust_remote_code,
    )
    model = task.load_model(path, None, config, tokenizer=tokenizer)
    return model.float().eval(), tokenizer


def read_items(path: Path) -> tuple[list[dict], list[str]]:
    """The JSON lines of a data file with their ``file:line`` locations."""
    items, locations = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: a line must be a JSON object")
        items.append(record)
        locations.append(f"{path}:{number}")
    if not items:
        raise DataError(f"{path}: no item to grade")
    return items, locations


def grade_model(
    sampler: Sampler, grader: Grader, items: list[dict], locations: list[str]
) -> GradeReport:
    outputs = [sampler(prompt_messages(item, loc)) for item, loc in zip(items, locations)]
    return grade_items(grader, outputs, items, locations)


def grade_path(
    path: str | Path,
    data_path: str | Path,
    grader_path: str | Path,
    pm: PluginManager,
    *,
    baseline: str | Path | None = None,
    max_new_tokens: int = 64,
    worst: int = 3,
) -> dict[str, Any]:
    """``{"baseline": summary, "tuned": summary}`` of a run or bundle graded on a data file.

    The baseline of a run is its base model (the adapter disabled); a bundle has one only when
    ``baseline`` names another run or bundle."""
    grader = read_grader(grader_path, pm)
    items, locations = read_items(Path(data_path))
    result: dict[str, Any] = {"grader": grader.name}
    if baseline is not None:
        base = open_sampler(baseline, pm, max_new_tokens=max_new_tokens)
    elif not is_bundle(Path(path)):
        base = open_sampler(path, pm, baseline=True, max_new_tokens=max_new_tokens)
    else:
        base = None
    if base is not None:
        result["baseline"] = grade_model(base, grader, items, locations).summary(worst)
    tuned = open_sampler(path, pm, max_new_tokens=max_new_tokens)
    result["tuned"] = grade_model(tuned, grader, items, locations).summary(worst)
    return result


def render(result: dict[str, Any]) -> list[str]:
    stages = [s for s in ("baseline", "tuned") if s in result]
    lines = [f"grader {result['grader']}", f"{'':>10}" + "".join(f"{s:>12}" for s in stages)]
    for key in ("mean", "std", "graded", "errors"):
        cells = []
        for s in stages:
            value = result[s][key]
            cells.append(f"{value:>12.4f}" if isinstance(value, float) else f"{value:>12}")
        lines.append(f"{key:>10}" + "".join(cells))
    for s in stages:
        lines.append(f"worst ({s}):")
        for row in result[s]["worst"]:
            grade = "error" if row["grade"] is None else f"{row['grade']:.3f}"
            why = f"  [{row['error']}]" if row.get("error") else ""
            output = row["output"].replace("\n", " ")[:80]
            lines.append(f"  {row['location']}: {grade}  {output!r}{why}")
    return lines


__all__ = [
    "build_grader",
    "read_grader",
    "grade_items",
    "grade_model",
    "grade_path",
    "open_sampler",
    "prompt_messages",
    "GradeReport",
]
