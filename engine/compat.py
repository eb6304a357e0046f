"""Plugins written for an earlier release keep working.

Where a documented contract changed since the first release (0.1.0), the older form is still
accepted: it is recognised when the plugin registers the object (from the object's signature or
members, with :mod:`inspect`), adapted to the new form, and reported with a
:class:`PluginDeprecationWarning` that names the plugin, the old form and the new one.
``CHANGELOG.md`` lists every such change and the release that stops accepting the old form.

=========================  ===================================  ==============================
registered                 0.1.0 form                           since 0.2.0
=========================  ===================================  ==============================
tracker factory            ``factory(run_dir, config)``         ``factory(run)``
runner                     ``runner(job)``                      ``runner(run)``
task                       ``greater_is_better``                ``metric_directions``
task                       ``tokenize(example, tokenizer,       ``tokenize(example, tokenizer,
                           max_length, labels=None)``           labels=None)``
task                       no ``validate``                      ``validate(example, location,
                                                                config)``
=========================  ===================================  ==============================

Hooks themselves need no adapter: pluggy passes an implementation only the arguments it names,
so ``on_evaluate(run, step, metrics)`` and ``transform_example(example, task, config)`` of 0.1.0
are called as they are.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from typing import Any

#: the release that deprecated the 0.1.0 forms, and the first one that may refuse them
DEPRECATED_IN = "0.2.0"
REMOVED_IN = "0.4.0"

#: ``max_length`` handed to a 0.1.0 ``tokenize``: the engine no longer asks a task to cut examples,
#: it measures each one and reports those longer than ``data.max_length`` before training
_NO_TRUNCATION = sys.maxsize


class PluginDeprecationWarning(DeprecationWarning):
    """A plugin uses an older form of a contract; it still works until :data:`REMOVED_IN`
    (``CHANGELOG.md`` says what to write instead)."""


def deprecated(who: str, what: str, instead: str) -> None:
    """Warn that ``who`` (a plugin, as ``PluginInfo.describe()`` names it) uses ``what``."""
    warnings.warn(
        f"{who} uses {what}, the form of tunewright 0.1.0: it still works, but it is deprecated since "
        f"{DEPRECATED_IN} and {REMOVED_IN} may refuse it; write {instead} (see CHANGELOG.md)",
        PluginDeprecationWarning,
        stacklevel=3,
    )


def _positional(fn: Any) -> list[inspect.Parameter] | None:
    """The positional parameters of a callable (a class: its constructor's), or ``None`` when
    Python cannot tell (a builtin)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _names(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _delegate(adapter: Any, wrapped: str, name: str) -> Any:
    """``adapter.<wrapped>.<name>``: what an adapter does not define is the wrapped object's. An
    adapter not yet filled in (being unpickled, copied) has nothing to hand on."""
    inner = vars(adapter).get(wrapped)
    if inner is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(inner, name)


# -------------------------------------------------------------------------
# Trackers: factory(run_dir, config) -> factory(run)
# -------------------------------------------------------------------------


class LegacyTrackerFactory:
    """A 0.1.0 tracker factory, ``factory(run_dir, config)``, called as ``factory(run)``. A factory
    that also takes ``start_step`` (as 0.1.0's built-in ``jsonl`` tracker did) is given the step a
    resumed run continues from."""

    def __init__(self, factory: Any):
        self.factory = factory
        self.takes_start_step = "start_step" in _names(factory)

    def __call__(self, run: Any) -> Any:
        extra = {"start_step": run.start_step} if self.takes_start_step else {}
        return self.factory(run.run_dir, run.config, **extra)

    def __getattr__(self, name: str) -> Any:  # check, description...: the factory's own
        return _delegate(self, "factory", name)


def is_legacy_tracker_factory(factory: Any) -> bool:
    params = _positional(factory)
    if not params:
        return False
    required = [p for p in params if p.default is inspect.Parameter.empty]
    return params[0].name == "run_dir" or len(required) >= 2


# -------------------------------------------------------------------------
# Runners: runner(job) -> runner(run)
# -------------------------------------------------------------------------


class LegacyRunner:
    """A 0.1.0 runner, ``runner(job)``: the job it was given is the :class:`tunewright.Run` (it has
    every attribute 0.1.0 documented for the job: ``config``, ``run_dir``, ``model``, ``method``)."""

    def __init__(self, runner: Any):
        self.runner = runner

    def __call__(self, run: Any) -> Any:
        return self.runner(run)

    def __getattr__(self, name: str) -> Any:
        return _delegate(self, "runner", name)


def is_legacy_runner(runner: Any) -> bool:
    params = _positional(runner)
    return bool(params and params[0].name == "job")


# -------------------------------------------------------------------------
# Tasks: greater_is_better, tokenize(..., max_length, ...), no validate
# -------------------------------------------------------------------------


class LegacyTask:
    """A 0.1.0 task seen through the current :class:`tunewright.Task` protocol; every other
    member is the task's own."""

    def __init__(self, task: Any):
        self._task = task
        self._tokenize_takes_max_length = "max_length" in _names(task.tokenize)

    @property
    def metric_directions(self) -> dict[str, str]:
        own = getattr(self._task, "metric_directions", None)
        if own is not None:
            return dict(own)
        better = "max" if self._task.greater_is_better else "min"
        return {"loss": "min", self._task.primary_metric: better}

    def validate(self, example: dict, location: str, config: Any) -> list:
        own = getattr(self._task, "validate", None)
        return list(own(example, location, config) or []) if own is not None else []

    def tokenize(self, example: dict, tokenizer: Any, labels: list[str] | None = None) -> dict:
        if self._tokenize_takes_max_length:
            return self._task.tokenize(example, tokenizer, _NO_TRUNCATION, labels=labels)
        return self._task.tokenize(example, tokenizer, labels=labels)

    def __getattr__(self, name: str) -> Any:
        return _delegate(self, "_task", name)

    def __repr__(self) -> str:
        return f"LegacyTask({self._task!r})"


def legacy_task_forms(task: Any) -> list[tuple[str, str]]:
    """``(old form, new form)`` of every 0.1.0 form a task object uses."""
    found = []
    if not hasattr(task, "metric_directions") and hasattr(task, "greater_is_better"):
        found.append(
            (
                "Task.greater_is_better",
                "Task.metric_directions, every metric mapped to 'max' or 'min'",
            )
        )
    if hasattr(task, "tokenize") and "max_length" in _names(task.tokenize):
        found.append(
            (
                "Task.tokenize(example, tokenizer, max_length, labels)",
                "Task.tokenize(example, tokenizer, labels) (the engine checks the length)",
            )
        )
    if not hasattr(task, "validate") and hasattr(task, "tokenize"):
        found.append(
            ("a Task without validate", "Task.validate(example, location, config) -> list[Problem]")
        )
    return found


# -------------------------------------------------------------------------
# At registration
# -------------------------------------------------------------------------


def adapt(kind: str, name: str, obj: Any, who: str) -> Any:
    """The object a registry keeps for ``obj``: ``obj`` itself, or an adapter of an older form
    (with a :class:`PluginDeprecationWarning` naming ``who``)."""
    if kind == "trackers" and callable(obj) and is_legacy_tracker_factory(obj):
        deprecated(
            who,
            f"the tracker factory {name!r} as factory(run_dir, config)",
            "factory(run) (run.run_dir, run.config, run.start_step)",
        )
        return LegacyTrackerFactory(obj)
    if kind == "runners" and callable(obj) and is_legacy_runner(obj):
        deprecated(
            who, f"the runner {name!r} as runner(job)", "runner(run), run being a tunewright.Run"
        )
        return LegacyRunner(obj)
    if kind == "tasks":
        forms = legacy_task_forms(obj)
        if forms:
            for old, new in forms:
                deprecated(who, f"{old} in task {name!r}", new)
            return LegacyTask(obj)
    return obj


__all__ = ["PluginDeprecationWarning", "adapt", "DEPRECATED_IN", "REMOVED_IN"]
