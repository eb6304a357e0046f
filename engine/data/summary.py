"""What the data holds, as a JSON-ready dict and as the plain-text report of ``tunewright validate``.

The core counts examples and tokens and estimates the training; everything else (labels, turns,
images, pixels) is the task's to say, through its optional ``summarize`` and ``render_summary``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

from ..types import Problem, Task, optional
from .checks import sort_problems


def summarize(
    examples: Sequence[dict],
    task: Any,
    *,
    lengths: Sequence[int | None] | None = None,
    config: Any = None,
    estimate: bool = True,
    locations: Sequence[str] | None = None,
    problems: Sequence[Problem] = (),
    usable: Sequence[bool] | None = None,
) -> dict:
    """``examples``; ``tokens`` (``total``, ``mean``, ``max``) from the tokenized ``lengths``;
    whatever the task's ``summarize`` adds; and with a job ``config`` (unless ``estimate`` is
    false: a held-out split), ``training``: optimizer steps, examples seen and
    ``estimated_tokens`` = tokens per epoch x epochs, capped by ``training.max_steps`` x batch
    size x gradient accumulation x mean tokens.

    The task's ``summarize`` is also given, if it names them, the examples' ``locations``
    (``file:line``), the ``problems`` found in them (every plugin's, screening's too) and the job
    ``config``, so that what it counts agrees with what validation refused.

    ``usable`` (per example; default: all) says which examples count: the others were refused, so
    they are in neither ``examples``, ``tokens`` nor the estimate; the task's ``summarize`` still
    sees them all, to report what it refused."""
    examples = list(examples)
    keep = list(usable) if usable is not None else [True] * len(examples)
    count = sum(keep)
    summary: dict[str, Any] = {"examples": count}
    counted = [n for n, ok in zip(lengths or [], keep) if n is not None and ok]
    if counted:
        summary["tokens"] = {
            "total": sum(counted),
            "mean": round(sum(counted) / len(counted), 1),
            "max": max(counted),
        }
    own = optional(task, Task, "summarize")
    if own is not None and examples:
        context = {
            "locations": None if locations is None else list(locations),
            "problems": list(problems),
            "config": config,
        }
        summary.update(own(examples, **_named(own, context)))
    training = getattr(config, "training", None) if estimate else None
    if training is not None and count:
        per_step = training.batch_size * training.gradient_accumulation_steps
        steps = math.ceil(training.epochs * math.ceil(count / per_step))
        seen = count * training.epochs
        if training.max_steps and 0 < training.max_steps < steps:
            steps = training.max_steps
            seen = min(seen, steps * per_step)
        figures = {
            "epochs": training.epochs,
            "optimizer_steps": steps,
            "examples_seen": round(seen),
        }
        if counted:
            figures["estimated_tokens"] = round(seen * sum(counted) / len(counted))
        summary["training"] = figures
    return summary


def _named(function: Any, keywords: dict[str, Any]) -> dict[str, Any]:
    """The ``keywords`` that ``function`` takes (all of them if it takes ``**kwargs``): an
    optional member gains arguments without breaking the plugins written before."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return keywords
    return {name: value for name, value in keywords.items() if name in parameters}


def render_report(problems: Sequence[Problem], summary: dict | None, task: Any = None) -> str:
    """A plain-text report: what each file holds, then errors, exclusions and warnings.
    ``summary`` maps a split (or file) name to a :func:`summarize` dict."""
    lines: list[str] = []
    render_own = optional(task, Task, "render_summary") if task is not None else None
    for split_name, part in (summary or {}).items():
        if not isinstance(part, dict):
            continue
        source = f" {part['source']}" if part.get("source") else ""
        fmt = f" ({part['format']})" if part.get("format") else ""
        lines.append(f"{split_name}:{source}{fmt}")
        facts = [f"{part.get('examples', 0):,} examples"]
        if part.get("tokens"):
            tokens = part["tokens"]
            facts.append(
                f"{tokens['total']:,} tokens (mean {tokens['mean']:g}, max {tokens['max']:,})"
            )
        lines.append("  " + ", ".join(facts))
        if render_own is not None:
            lines += [f"  {line}" for line in render_own(part)]
        if part.get("training"):
            training = part["training"]
            text = (
                f"  training: {training['epochs']:g} epoch(s), {training['optimizer_steps']:,} "
                f"optimizer steps, {training['examples_seen']:,} examples seen"
            )
            if training.get("estimated_tokens") is not None:
                text += f", about {training['estimated_tokens']:,} tokens"
            lines.append(text)
    problems = sort_problems(problems)
    titles = {
        "error": ("error", "errors"),
        "excluded": ("example excluded", "examples excluded"),
        "warning": ("warning", "warnings"),
    }
    for severity, (one, many) in titles.items():
        group = [p for p in problems if p.severity == severity]
        if group:
            lines.append(f"{len(group)} {one if len(group) == 1 else many}:")
            lines += [f"  {p}" for p in group]
    if not problems:
        lines.append("no problems found")
    return "\n".join(lines)


__all__ = ["summarize", "render_report"]
