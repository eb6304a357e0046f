"""Which metric judges a run, and which way is better: the one rule behind the run's summary
(``eval.json``'s ``primary_metric``), early stopping and the edge parity gate.

A task names its metrics' directions (``Task.metric_directions``: ``"max"`` or ``"min"``); the
metric that judges is ``task.metric_for(labels)`` where the task has it (``mse`` for regression),
else ``task.primary_metric``.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, PluginError
from .types import Task, optional

DIRECTIONS = ("max", "min")


def metric_direction(
    task: Any, metric: str, *, task_name: str | None = None, key: str | None = None
) -> str:
    """``"max"`` when a larger ``metric`` is better, ``"min"`` when a smaller one is, as the task
    says. A metric the task does not report is a :class:`tunewright.ConfigError` at ``key`` when
    a user named it (``key``: where), else a :class:`tunewright.PluginError` (the task chose it);
    a direction other than max or min is the task's :class:`tunewright.PluginError`."""
    name = task_name or type(task).__name__
    directions = dict(task.metric_directions)
    if metric not in directions:
        message = f"task {name!r} reports no metric {metric!r} (it reports: {', '.join(sorted(directions))})"
        if key is not None:
            raise ConfigError(f"{key}: {message}")
        raise PluginError(
            f"{message}; its primary_metric or metric_for names one its metric_directions lack"
        )
    direction = directions[metric]
    if direction not in DIRECTIONS:
        raise PluginError(
            f"task {name!r} says metric {metric!r} goes {direction!r} "
            "(a task's metric_directions take 'max' or 'min')"
        )
    return direction


def primary_metric(
    task: Any, labels: list[str] | None, *, task_name: str | None = None
) -> tuple[str, str]:
    """``(name, direction)`` of the metric that judges a run of ``task`` on ``labels`` (``None``
    for a task without labels, or regression)."""
    metric_for = optional(task, Task, "metric_for")
    name = metric_for(labels) if metric_for is not None else task.primary_metric
    return name, metric_direction(task, name, task_name=task_name)


def better_by(value: float, reference: float, direction: str) -> float:
    """How much better ``value`` is than ``reference`` (negative: worse), in the metric's units."""
    return value - reference if direction == "max" else reference - value


__all__ = ["DIRECTIONS", "metric_direction", "primary_metric", "better_by"]
