"""Objectives beyond supervised tuning, each a plugin on the public API: ``dpo`` (preference
pairs, :mod:`.dpo`), ``rft`` (graded samples, GRPO family, :mod:`.rft`) and ``distill`` (a
teacher into a smaller student, :mod:`.distill`). An objective is a task (what an example is, its
loss and its figures), a dataset format when its data has a shape of its own, and a config
section for its settings."""

from __future__ import annotations

import json

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


@hookimpl
def on_train_begin(run):
    # a bundle teacher's answers were written and graded while the data was checked: the run
    # records how many of them it kept
    task = run.task
    summary = task.answers_summary() if isinstance(task, DistillTask) else None
    if summary is None:
        return
    (run.run_dir / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    graded = (
        f", graded at least {summary['min_grade']:g}" if summary["min_grade"] is not None else ""
    )
    run.say(f"distill: {summary['kept']} of {summary['answers']} teacher answers kept{graded}")


@hookimpl
def on_train_end(run, result):
    # the export's parity gate judges an rft bundle on the tuned model's own held-out answers
    if isinstance(run.task, RftTask) and run.validation_features:
        count = run.task.record_answers(run)
        run.say(f"rft: the tuned model's greedy answers to {count} held-out prompts recorded")
