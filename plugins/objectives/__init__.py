"""Objectives beyond supervised tuning, each a plugin on the public API: ``dpo`` (preference
pairs, :mod:`.dpo`), ``rft`` (graded samples, GRPO family, :mod:`.rft`) and ``distill`` (a
teacher into a smaller student, :mod:`.distill`). An objective is a task (what an example is, its
loss and its figures), a dataset format when its data has a shape of its own, and a config
section for its settings."""

from __future__ import annotations

from tunewright import hookimpl

from .distill import DistillSection, DistillTask
from .dpo import DpoSection, DpoTask, PreferenceFormat
from .rft import RftSection, RftTask


@hookimpl(trylast=True)
def register_tasks(register):
    register("dpo", DpoTask())
    register("rft", RftTask())
    register("distill", DistillTask())


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("preference", PreferenceFormat())


@hookimpl(trylast=True)
def register_config_sections(register):
    register("dpo", DpoSection)
    register("rft", RftSection)
    register("distill", DistillSection)
