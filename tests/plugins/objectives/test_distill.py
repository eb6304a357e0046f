"""The ``distill`` objective: a student cut from the teacher's base learns the teacher's top-k
distribution; the teacher reads each example once, then the cache answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunewright import ConfigError, get_plugin_manager, load_config, run_job
from tunewright.plugins.objectives.distill import keep_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine"))
from samples import chat_rows, write_jsonl


def test_keep_layers_keeps_the_first_and_last(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    last = model.model.layers[-1]
    cut = keep_layers(model, 1)
    assert len(cut.model.layers) == 1 and cut.config.num_hidden_layers == 1
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert keep_layers(model, 2).model.layers[-1] is not last  # a fresh model: its own last
    with pytest.raises(Exception, match="has 2 layers"):
        keep_layers(model, 3)


def test_a_half_depth_student_learns_the_teachers_distribution(
    tiny_llama_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(32))
    pm = get_plugin_manager()

    def job(name: str) -> dict:
        return {
            "model": str(tiny_llama_dir),
            "task": "distill",
            "method": "full",
            "data": {"train": str(data), "validation": 0.25, "max_length": 64},
            "training": {"max_steps": 8, "batch_size": 8, "learning_rate": 5e-3},
            "distill": {
                "teacher": str(tiny_llama_dir),
                "top_k": 8,
                "student_layers": 1,
                "hard_weight": 0.5,
            },
            "output": str(tmp_path / name),
            "seed": 3,
        }

    task = pm.registries.tasks["distill"]
    run_job(load_config(job("a"), pm.registries), pm, echo=lambda _: None)
    assert task.teacher_calls == 32  # every example read by the teacher once
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    config = json.loads((tmp_path / "a" / "adapter" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    # a second job on the same data and teacher reads the cache
    task.teacher_calls = 0
    run_job(load_config(job("b"), pm.registries), pm, echo=lambda _: None)
    assert task.teacher_calls == 0


# -- a bundle as the teacher ---------------------------------------------------------------------

ANSWER_GRADER = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "evaluation_metric": "fuzzy_match",
}


@pytest.fixture(scope="module")
def teacher_bundle(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama, taught the fruit colours for a few steps (an untaught one answers blank
    lines), exported as an fp32 chat bundle: a teacher the torch-free runtime runs."""
    from tunewright.edge import export_run

    pm = get_plugin_manager()
    folder = tmp_path_factory.mktemp("teacher")
    data = write_jsonl(folder / "chat.jsonl", chat_rows(48, seed=1))
    raw = {
        "model": str(tiny_llama_dir),
        "task": "chat",
        "method": "full",
        "data": {"train": str(data), "validation": 0.1, "max_length": 64},
        "training": {"max_steps": 40, "batch_size": 8, "learning_rate": 5e-3},
        "output": str(folder / "run"),
        "seed": 1,
    }
    run_job(load_config(raw, pm.registries), pm, echo=lambda _: None)
    export_run(
        folder / "run",
        folder / "bundle",
        quantize="none",
        bench=False,
        fidelity_examples=1,
        new_tokens=4,
        pm=pm,
        log=lambda _: None,
    )
    return folder / "bundle"


def fake_bundle(folder: Path, task_kind: str = "causal_lm") -> Path:
    """A folder whose manifest the config check reads (no model: nothing runs it)."""
    from tunewright.edge.runtime import FORMAT_VERSION, MANIFEST
    from tunewright.edge.runtime.bundle import FORMAT_NAME

    folder.mkdir()
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "task_kind": task_kind}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def bundle_job(model: Path, data: Path, out: Path, **distill) -> dict:
    return {
        "model": str(model),
        "task": "distill",
        "method": "full",
        "data": {"train": str(data), "validation": 0.25, "max_length": 64},
        "training": {"max_steps": 8, "batch_size": 4, "learning_rate": 5e-3},
        "distill": distill,
        "output": str(out),
        "seed": 3,
    }


def test_the_distill_section_checks_a_bundle_teachers_settings(tmp_path):
    pm = get_plugin_manager()
    data = tmp_path / "d.jsonl"
    teacher_bundle = fake_bundle(tmp_path / "bundle")
    with pytest.raises(ConfigError, match="distill.top_k: a bundle teacher gives no logits"):
        load_config(
            bundle_job(Path("m"), data, tmp_path / "o", teacher=str(teacher_bundle), top_k=4),
            pm.registries,
        )
    with pytest.raises(ConfigError, match="distill.min_grade: .* no distill.grader"):
        load_config(
            bundle_job(Path("m"), data, tmp_path / "o", teacher=str(teacher_bundle), min_grade=0.5),
            pm.registries,
        )
    with pytest.raises(ConfigError, match="distill.grader: .*teacher m is not a bundle"):
        load_config(
            bundle_job(Path("m"), data, tmp_path / "o", teacher="m", grader=ANSWER_GRADER),
            pm.registries,
        )
    with pytest.raises(ConfigError, match="distill.grader: text_similarity grader .close.: meteor"):
        load_config(
            bundle_job(
                Path("m"),
                data,
                tmp_path / "o",
                teacher=str(teacher_bundle),
                grader={**ANSWER_GRADER, "evaluation_metric": "meteor"},
            ),
            pm.registries,
        )
    classifier = fake_bundle(tmp_path / "classifier", task_kind="text_classification")
    with pytest.raises(ConfigError, match="distill.teacher: .* must generate text"):
        load_config(
            bundle_job(Path("m"), data, tmp_path / "o", teacher=str(classifier)), pm.registries
        )
    not_a_bundle = tmp_path / "fake"
    not_a_bundle.mkdir()
    (not_a_bundle / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="distill.teacher: .*'format'"):
        load_config(
            bundle_job(Path("m"), data, tmp_path / "o", teacher=str(not_a_bundle)), pm.registries
        )
    # a bundle teacher with a grader and a threshold is a valid config
    load_config(
        bundle_job(
            Path("m"),
            data,
            tmp_path / "o",
            teacher=str(teacher_bundle),
            grader=ANSWER_GRADER,
            min_grade=0.5,
        ),
        pm.registries,
    )
    # a run's saved config.yaml spells out every default: read back (tunewright export, eval),
    # those are not settings the user gave, for a local teacher or a bundle one
    from tunewright.plugins.objectives.distill import DistillSection

    defaults = {
        key: field.default
        for key, field in DistillSection.model_fields.items()
        if key != "teacher" and key not in ("grader", "min_grade")
    }
    for teacher in ("m", str(teacher_bundle)):
        load_config(
            bundle_job(Path("m"), data, tmp_path / "o", teacher=teacher, **defaults),
            pm.registries,
        )


@pytest.mark.slow  # exports a bundle and trains
def test_a_bundle_teachers_graded_answers_teach_the_student(
    teacher_bundle, tiny_llama_dir, tmp_path, monkeypatch
):
    """The seeds' process: the bundle answers each prompt once (cached), the grader keeps the
    answers at or above min_grade, the student learns the kept answers."""
    from tunewright import build_grader
    from tunewright.edge.runtime import load_bundle

    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    rows = chat_rows(24, seed=5)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    pm = get_plugin_manager()
    # what the filter must keep, worked out here through the runtime and the grader themselves
    teacher = load_bundle(teacher_bundle)
    grader = build_grader(ANSWER_GRADER, pm)
    grades = []
    for row in rows:
        answer = teacher.generate(row["messages"][:-1], max_new_tokens=12, temperature=0.0).strip()
        item = {**row, "reference_answer": row["messages"][-1]["content"]}
        grades.append(grader.grade({"output_text": answer, "choices": [answer]}, item))
    distinct = sorted(set(grades))
    assert len(distinct) > 1, grades  # the filter has something to keep and to drop
    threshold = distinct[len(distinct) // 2]
    good = {f"{data}:{n}" for n, g in enumerate(grades, start=1) if g >= threshold}

    settings = {
        "teacher": str(teacher_bundle),
        "max_tokens": 12,
        "grader": ANSWER_GRADER,
        "min_grade": threshold,
        "student_layers": 1,
    }
    task = pm.registries.tasks["distill"]
    task.teacher_calls = 0
    run_job(
        load_config(bundle_job(tiny_llama_dir, data, tmp_path / "a", **settings), pm.registries),
        pm,
        echo=lambda _: None,
    )
    assert task.teacher_calls == len(
        rows
    )  # each prompt answered once, though checked and tokenized
    kept = {location for location, answer in task.answers.items() if answer["kept"]}
    assert kept == good
    record = json.loads((tmp_path / "a" / "distill.json").read_text())
    assert (record["answers"], record["kept"]) == (len(rows), len(good))
    held = [
        json.loads(line)
        for split in ("train", "validation")
        for line in (tmp_path / "a" / "data" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert len(held) == len(good)
    metrics = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in metrics if "loss" in r]
    assert losses[-1] < losses[0]  # the student's loss on the teacher's answers falls
    figures = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert figures["final"]["loss"] < figures["baseline"]["loss"]

    # a second job on the same prompts and teacher reads the cache: the bundle does not run
    task.teacher_calls = 0
    run_job(
        load_config(bundle_job(tiny_llama_dir, data, tmp_path / "b", **settings), pm.registries),
        pm,
        echo=lambda _: None,
    )
    assert task.teacher_calls == 0
    assert json.loads((tmp_path / "b" / "distill.json").read_text())["kept"] == len(good)
