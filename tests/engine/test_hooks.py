"""Every hook, implemented by a plugin the way a third party would, through a real job or command.

``tests/test_docs.py`` checks that each hook has a ``test_hook...`` test here (or elsewhere) whose
body implements it.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from samples import chat_rows, classification_rows, write_jsonl

from tunewright import (
    ConfigError,
    DataError,
    Problem,
    Section,
    UsageError,
    get_plugin_manager,
    hookimpl,
    load_config,
    run_job,
)


def chat_job(model_dir: Path, data: Path, out: Path, **changes) -> dict:
    raw = {
        "model": str(model_dir),
        "task": "chat",
        "method": "lora",
        "data": {"train": str(data), "validation": 0.2, "max_length": 64},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "precision": "fp32",
        },
        "output": str(out),
    }
    raw.update(changes)
    return raw


def train(raw: dict, *plugins):
    pm = get_plugin_manager(plugins=list(plugins))
    return run_job(load_config(raw, pm.registries), pm, echo=lambda m: None), pm


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


# -------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------


def test_hook_register_models(tiny_llama_dir, tmp_path):
    class Tiny:
        description = "a two-layer Llama, from a plugin"

        def resolve(self):
            return tiny_llama_dir

    class Models:
        @hookimpl
        def register_models(self, register):
            register("tiny-llama", Tiny())

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    out = tmp_path / "run"
    _, pm = train(chat_job("tiny-llama", data, out, model="tiny-llama"), ("tiny-models", Models()))
    used = {p["name"]: p["used"] for p in json.loads((out / "plugins.json").read_text())}
    assert used["tiny-models"] == ["models:tiny-llama"]
    assert pm.registries.owner("models", "tiny-llama") == "tiny-models"


class TsvChat:
    """A dataset format a plugin adds: one prompt<TAB>reply pair per line."""

    suffixes = (".tsv",)
    description = "prompt<TAB>reply, one pair per line"

    def read(self, path: Path):
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            if line.strip():
                yield number, line

    def detect(self, record) -> bool:
        return isinstance(record, str) and "\t" in record

    def task_for(self, examples):
        return "chat"

    def to_example(self, record):
        if record.count("\t") != 1:
            raise DataError("expected one tab between prompt and reply")
        prompt, reply = record.split("\t")
        return {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": reply},
            ]
        }


def test_hook_register_dataset_formats(tiny_llama_dir, tmp_path):
    class Formats:
        @hookimpl
        def register_dataset_formats(self, register):
            register("tsv-chat", TsvChat())

    from tunewright.data import read_examples

    data = tmp_path / "pairs.tsv"
    data.write_text(
        "".join(
            f"{r['messages'][0]['content']}\t{r['messages'][1]['content']}\n" for r in chat_rows(60)
        )
    )
    out = tmp_path / "run"
    train(chat_job(tiny_llama_dir, data, out), ("tsv-formats", Formats()))
    validation = [
        json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()
    ]
    assert validation[0]["messages"][0]["role"] == "user"  # read through the plugin's format
    # a broken line is reported with its line number and the format's own words
    data.write_text("hi\tthere\nno\ttabs\there\n")
    pm = get_plugin_manager(plugins=[("tsv-formats", Formats())])
    examples, locations, problems = read_examples(data, pm.registries, format="tsv-chat")
    assert len(examples) == 1 and locations == [f"{data}:1"]
    assert [str(p) for p in problems] == [f"{data}:2: expected one tab between prompt and reply"]


def test_hook_register_tasks(tiny_bert_dir, tmp_path):
    """A task of a plugin's own: its rules, labels and metrics drive the job."""
    from tunewright.plugins.tasks import ClassificationTask

    class Sentiment(ClassificationTask):
        description = "sentiment of short reviews: positive or negative only"
        metric_directions = {**ClassificationTask.metric_directions}

        def validate(self, example, location, config=None):
            problems = super().validate(example, location, config)
            if example.get("label") not in ("positive", "negative"):
                problems.append(
                    Problem(
                        location, f"label {example.get('label')!r} (allowed: positive, negative)"
                    )
                )
            return problems

    class Tasks:
        @hookimpl
        def register_tasks(self, register):
            register("sentiment", Sentiment())

    rows = [r for r in classification_rows(200) if r["label"] != "neutral"]
    data = write_jsonl(tmp_path / "reviews.jsonl", rows)
    raw = {
        "model": str(tiny_bert_dir),
        "task": "sentiment",
        "method": "full",
        "data": {"train": str(data), "validation": 0.2},
        "training": {"max_steps": 60, "batch_size": 8, "learning_rate": 2e-3, "precision": "fp32"},
        "output": str(tmp_path / "run"),
    }
    result, _ = train(raw, ("sentiment-tasks", Tasks()))
    assert result.metrics["accuracy"] > 0.8
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["negative", "positive"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows[:40], {"text": "meh", "label": "neutral"}])
    with pytest.raises(
        DataError, match=rf"{bad}:41: label 'neutral' \(allowed: positive, negative\)"
    ):
        train(
            {**raw, "data": {"train": str(bad)}, "output": str(tmp_path / "bad")},
            ("sentiment-tasks", Tasks()),
        )


def test_hook_register_methods(tiny_bert_dir, tmp_path):
    """A method of a plugin's own (train the head only), with its config section."""
    from safetensors.torch import load_file, save_file

    class HeadSettings(Section):
        scale: float = 1.0

    class HeadOnly:
        config_class = HeadSettings
        reference = "https://example.org/head-only"
        task_kinds = ("sequence_classification",)

        def apply(self, model, settings, task_kind):
            for name, param in model.named_parameters():
                param.requires_grad = name.startswith("classifier")
            return model

        def trainable_state(self, model):
            return {
                k: v.detach().clone()
                for k, v in model.state_dict().items()
                if k.startswith("classifier")
            }

        def load_trainable_state(self, model, state):
            model.load_state_dict(state, strict=False)

        def save(self, model, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            save_file(self.trainable_state(model), str(Path(path) / "head.safetensors"))

        def load(self, model, path, settings, task_kind):
            model = self.apply(model, settings, task_kind)
            self.load_trainable_state(model, load_file(str(Path(path) / "head.safetensors")))
            return model

        def merge(self, model):
            return model

    class Methods:
        @hookimpl
        def register_methods(self, register):
            register("head-only", HeadOnly())

    data = write_jsonl(tmp_path / "labels.jsonl", classification_rows(100))
    raw = {
        "model": str(tiny_bert_dir),
        "task": "classification",
        "method": "head-only",
        "head-only": {"scale": 2.0},
        "data": {"train": str(data)},
        "training": {"max_steps": 3, "batch_size": 8, "precision": "fp32"},
        "output": str(tmp_path / "run"),
    }
    result, pm = train(raw, ("methods", Methods()))
    assert (tmp_path / "run" / "adapter" / "head.safetensors").is_file() and result.global_step == 3
    with pytest.raises(
        ConfigError, match="head-only.scael: unknown key; did you mean 'head-only.scale'"
    ):
        load_config({**raw, "head-only": {"scael": 2.0}}, pm.registries)
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    with pytest.raises(
        UsageError,
        match="method: 'head-only' cannot tune a causal_lm model .* it supports sequence_classification",
    ):
        train(
            {**raw, "task": "chat", "data": {"train": str(chat)}, "output": str(tmp_path / "chat")},
            ("methods", Methods()),
        )


def test_hook_register_config_sections(tiny_llama_dir, tmp_path):
    seen = []

    class Notes(Section):
        owner: str
        tags: list[str] = []

    class Plugin:
        @hookimpl
        def register_config_sections(self, register):
            register("notes", Notes)

        @hookimpl
        def on_train_begin(self, run):
            seen.append(run.config.section("notes"))

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    raw = chat_job(tiny_llama_dir, data, tmp_path / "run", notes={"owner": "ana", "tags": ["x"]})
    train(raw, ("notes", Plugin()))
    assert seen == [Notes(owner="ana", tags=["x"])]
    pm = get_plugin_manager(plugins=[("notes", Plugin())])
    with pytest.raises(ConfigError, match="notes.owner: required key is missing"):
        load_config({**raw, "notes": {"tags": []}}, pm.registries)


def test_hook_register_trackers(tiny_llama_dir, tmp_path):
    seen: list = []

    class Recorder:
        def __init__(self, run):
            seen.append(("made", run.run_dir, run.start_step))

        def log(self, step, metrics):
            seen.append((step, metrics))

        def close(self):
            seen.append(("closed",))

    class Trackers:
        @hookimpl
        def register_trackers(self, register):
            register("recorder", Recorder)

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    out = tmp_path / "run"
    train(
        chat_job(tiny_llama_dir, data, out, trackers=["jsonl", "recorder"]),
        ("recorder-trackers", Trackers()),
    )
    assert seen[0] == ("made", out, 0) and seen[-1] == ("closed",)
    assert [step for step, *rest in seen[1:-1] if "loss" in rest[0]] == [1, 2, 3, 4]
    stages = [m["eval_stage"] for _, m in seen[1:-1] if "eval_stage" in m]
    assert stages == ["baseline", "final"]
    # the built-in jsonl tracker saw the same lines
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(seen) - 2


def test_hook_register_runners(tiny_llama_dir, tmp_path):
    class Runners:
        @hookimpl
        def register_runners(self, register):
            def halves(run):
                """Train the job in two halves, from public names only."""
                from tunewright import train

                first = train(run, stop_at_step=run.config.training.max_steps // 2)
                second = train(run, resume_from=first.checkpoint)
                second.train_tokens += first.train_tokens
                return second

            register("halves", halves)

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    raw = chat_job(tiny_llama_dir, data, tmp_path / "halves", runner="halves")
    raw["training"] = {**raw["training"], "max_steps": 6}
    pm = get_plugin_manager(plugins=[("halves-runners", Runners())])
    config = load_config(raw, pm.registries)
    before = config.model_dump()
    result = run_job(config, pm, echo=lambda m: None)
    assert result.global_step == 6 and config.model_dump() == before  # nothing it was given changed
    rows = [
        json.loads(line)
        for line in (tmp_path / "halves" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # two halves are one run: the same losses as the built-in local runner's
    train(
        {**raw, "runner": "local", "output": str(tmp_path / "local")}, ("halves-runners", Runners())
    )
    assert losses(tmp_path / "halves") == pytest.approx(losses(tmp_path / "local"), rel=1e-5)


def test_a_runner_written_from_the_docs_resumes_where_the_run_stopped(tiny_llama_dir, tmp_path):
    """README: the built-in ``local`` runner is ``train(run)``; a plugin's runner written so
    continues a ``--resume``d run from its checkpoint: every step is logged once, with the losses
    of a run never interrupted, and the progress counts the steps of the whole run."""
    from tunewright import train as tw_train

    class Stop(Exception):
        pass

    class DocsRunner:
        stop_at: int | None = None

        @hookimpl
        def register_runners(self, register):
            register("docs", lambda run: tw_train(run))

        @hookimpl
        def on_step_end(self, run, step, logs):
            if step == self.stop_at and "loss" in logs:
                raise Stop(f"killed at step {step}")

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    raw = chat_job(tiny_llama_dir, data, tmp_path / "docs", runner="docs")
    raw["training"] = {**raw["training"], "max_steps": 8, "save_steps": 2}
    plugin = DocsRunner()
    plugin.stop_at = 6  # after step 6 is logged and before its checkpoint: checkpoint-4 is the last
    pm = get_plugin_manager(plugins=[("docs-runner", plugin)])
    with pytest.raises(Stop):
        run_job(load_config(raw, pm.registries), pm, echo=lambda m: None)
    assert len(losses(tmp_path / "docs")) == 6
    with (tmp_path / "docs" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 7, "loss": 1.')  # a line a killed process left half-written
    plugin.stop_at = None
    said: list[str] = []
    result = run_job(load_config(raw, pm.registries), pm, resume=True, echo=said.append)
    assert result.global_step == 8
    assert any("resuming from" in line and "checkpoint-4" in line for line in said)
    progress = [line.split()[1] for line in said if line.startswith("step ") and "loss" in line]
    assert progress == ["5/8", "6/8", "7/8", "8/8"]
    rows = [
        json.loads(line) for line in (tmp_path / "docs" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]
    train(
        {
            **raw,
            "runner": "local",
            "output": str(tmp_path / "whole"),
            "training": {**raw["training"], "save_steps": None},
        }
    )
    assert losses(tmp_path / "docs") == pytest.approx(losses(tmp_path / "whole"), rel=1e-5)


def test_progress_counts_the_steps_of_the_whole_run(tiny_llama_dir, tmp_path):
    """A runner that trains in halves prints step 1/6 ... 6/6, not 1/3 then 4/6."""
    from tunewright import train as tw_train

    class Halves:
        @hookimpl
        def register_runners(self, register):
            def halves(run):
                first = tw_train(run, stop_at_step=3)
                return tw_train(run, resume_from=first.checkpoint)

            register("halves", halves)

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    raw = chat_job(tiny_llama_dir, data, tmp_path / "halves", runner="halves")
    raw["training"] = {**raw["training"], "max_steps": 6}
    pm = get_plugin_manager(plugins=[("halves", Halves())])
    said: list[str] = []
    run_job(load_config(raw, pm.registries), pm, echo=said.append)
    progress = [line.split()[1] for line in said if line.startswith("step ") and "loss" in line]
    assert progress == [f"{n}/6" for n in range(1, 7)]


def test_hook_register_commands():
    from tunewright.cli import build_cli

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            @click.argument("name")
            @click.pass_obj
            def hello(pm, name):
                """Say hello, with the invocation's plugin manager."""
                click.echo(f"hello {name} from {len(pm.infos)} plugins")

    pm = get_plugin_manager(plugins=[("commands", Commands())])
    result = CliRunner().invoke(build_cli(pm), ["hello", "edge"], obj=pm)
    assert result.exit_code == 0 and result.output == f"hello edge from {len(pm.infos)} plugins\n"
    assert "hello" not in build_cli(get_plugin_manager()).commands  # a fresh group per manager


def test_hook_registration_through_pluggy_as_a_wrapper():
    """A wrapper implementation runs around the plugin's own call, as pluggy promises; calling
    the function directly would only have made a generator."""

    class Method:
        config_class = None
        reference = "https://example.org"

        def apply(self, model, settings, task_kind): ...
        def trainable_state(self, model): ...
        def load_trainable_state(self, model, state): ...
        def save(self, model, path): ...
        def load(self, model, path, settings, task_kind): ...
        def merge(self, model): ...

    class Wrapping:
        @hookimpl(wrapper=True)
        def register_methods(self, register):
            register("wrapped", Method())
            return (yield)

    pm = get_plugin_manager(plugins=[("wrapping", Wrapping())])
    assert "wrapped" in pm.registries.kind("methods")
    assert pm.registries.owner("methods", "wrapped") == "wrapping"


def test_a_registered_object_missing_protocol_members_is_refused():
    from tunewright import PluginError

    class Half:
        @hookimpl
        def register_tasks(self, register):
            class Task:
                model_kind = "causal_lm"

            register("half", Task())

    with pytest.raises(
        PluginError,
        match="plugin 'half' registered task 'half', which lacks what a tunewright.Task has: collate",
    ):
        _ = get_plugin_manager(plugins=[("half", Half())]).registries


# -------------------------------------------------------------------------
# Examples
# -------------------------------------------------------------------------


def test_hook_validate_example(tmp_path):
    from tunewright.data import check_examples, read_examples

    class NoSecrets:
        @hookimpl
        def validate_example(self, example, location):
            if "password" in example.get("text", ""):
                return [Problem(location, "holds a password (remove secrets from training data)")]

    class Broken:
        @hookimpl
        def validate_example(self, example):
            raise KeyError("image")

    pm = get_plugin_manager(plugins=[("nosecrets", NoSecrets())])
    records = classification_rows(60)
    records[1] = {"text": "my password", "label": ""}
    path = write_jsonl(tmp_path / "train.jsonl", records)
    examples, locations, _ = read_examples(path, pm.registries)
    problems = check_examples(examples, locations, "classification", pm)
    assert sorted((p.location, p.message.split(" (")[0]) for p in problems) == [
        (f"{path}:2", "holds a password"),
        (f"{path}:2", "missing label"),
    ]
    broken = get_plugin_manager(plugins=[("broken", Broken())])
    from tunewright import PluginError

    with pytest.raises(
        PluginError, match=rf"plugin 'broken' failed in validate_example at {path}:1: KeyError"
    ):
        check_examples(examples, locations, "classification", broken)


def test_hook_transform_example(tiny_bert_dir, tmp_path):
    class Redact:
        @hookimpl
        def transform_example(self, example, task):
            if "7" in example["text"]:
                raise DataError("cannot redact this example (allowed: plain text)")
            return {**example, "text": example["text"].replace("film", "[redacted]")}

    data = write_jsonl(
        tmp_path / "labels.jsonl", [r for r in classification_rows(100) if "7" not in r["text"]]
    )
    out = tmp_path / "run"
    raw = {
        "model": str(tiny_bert_dir),
        "task": "classification",
        "method": "full",
        "data": {"train": str(data)},
        "training": {"max_steps": 2, "batch_size": 8, "precision": "fp32"},
        "output": str(out),
    }
    train(raw, ("redact", Redact()))
    kept = (out / "data" / "train.jsonl").read_text()
    assert "[redacted]" in kept and "film" not in kept
    refused = write_jsonl(tmp_path / "more.jsonl", classification_rows(100))
    with pytest.raises(DataError, match="cannot redact this example"):
        train(
            {**raw, "data": {"train": str(refused)}, "output": str(tmp_path / "other")},
            ("redact", Redact()),
        )


# -------------------------------------------------------------------------
# Lifecycle
# -------------------------------------------------------------------------


def test_hooks_of_the_lifecycle_in_order(tiny_llama_dir, tmp_path):
    calls = []

    class Recorder:
        @hookimpl
        def on_train_begin(self, run):
            calls.append(("on_train_begin", run.model is not None))

        @hookimpl
        def on_step_end(self, run, step, logs):
            calls.append(("on_step_end", step, "loss" in logs))

        @hookimpl
        def on_evaluate(self, run, step, metrics, stage):
            calls.append(("on_evaluate", step, stage, tuple(sorted(metrics))))

        @hookimpl
        def on_checkpoint(self, run, step, path):
            calls.append(("on_checkpoint", step, Path(path).exists()))

        @hookimpl
        def on_train_end(self, run, result):
            calls.append(("on_train_end", result.global_step, (run.run_dir / "adapter").is_dir()))

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    raw = chat_job(tiny_llama_dir, data, tmp_path / "run")
    raw["training"] = {**raw["training"], "save_steps": 2, "eval_steps": 2, "logging_steps": 2}
    train(raw, ("recorder", Recorder()))
    names = ("loss", "mean_token_accuracy", "perplexity")
    training = [
        c for c in calls if c[0] == "on_step_end" and c[2]
    ]  # the training lines, not evaluations
    assert training == [("on_step_end", 2, True), ("on_step_end", 4, True)]
    assert [c for c in calls if c[0] != "on_step_end"] == [
        ("on_evaluate", 0, "baseline", names),
        ("on_train_begin", True),
        ("on_evaluate", 2, "training", names),
        ("on_checkpoint", 2, True),
        ("on_checkpoint", 4, True),
        ("on_evaluate", 4, "final", names),
        ("on_train_end", 4, True),
    ]
    # every evaluation is logged too, after the training line of its step
    order = [c[:2] for c in calls if c[0] in ("on_step_end", "on_evaluate")]
    assert order.index(("on_step_end", 2)) < order.index(("on_evaluate", 2))


def test_hook_register_exporters(tiny_bert_dir, tmp_path):
    """A third-party exporter (here wrapping torch.onnx) registered and picked with --exporter."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunewright.edge import ExportedModel, export_bundle

    calls = []

    class PlainExporter:
        description = "torch.onnx, from a plugin"
        preference = 0

        def supports(self, model, task_kind):
            return task_kind == "sequence_classification"

        def export(self, model, preprocessor, task_kind, out_dir):
            calls.append(task_kind)
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            ids = torch.ones((1, 8), dtype=torch.long)
            torch.onnx.export(
                model,
                (ids, torch.ones_like(ids)),
                str(out_dir / "model.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes={
                    "input_ids": {0: "b", 1: "t"},
                    "attention_mask": {0: "b", 1: "t"},
                    "logits": {0: "b"},
                },
                dynamo=False,
                opset_version=17,
            )
            return ExportedModel(out_dir, task_kind, exporter="plain")

    class ExporterPlugin:
        @hookimpl
        def register_exporters(self, register):
            register("plain", PlainExporter())

    pm = get_plugin_manager(plugins=[("plain", ExporterPlugin())])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = [
        {"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": ["neg", "pos"][i % 2]}
        for i in range(16)
    ]
    result = export_bundle(
        model,
        tokenizer,
        "sequence_classification",
        examples,
        tmp_path / "bundle",
        exporter="plain",
        quantize="none",
        labels=["neg", "pos"],
        pm=pm,
        bench=False,
        log=lambda m: None,
    )
    assert calls == ["sequence_classification"]
    assert result.manifest["exporter"]["name"] == "plain" and result.parity.passed


def test_hook_register_quantizers(tiny_bert_dir, tmp_path):
    """A third-party quantizer chosen by name; its result passes the same parity gate."""
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunewright.edge import export_bundle

    class Copy:
        description = "the fp32 export, copied (a plugin's quantizer)"
        auto_candidate = False

        def supports(self, exported):
            return exported.runtime == "onnxruntime"

        def quantize(self, exported, out_dir, calibration):
            shutil.copytree(exported.folder, out_dir)
            return exported.moved(
                out_dir, quantization={"name": "copy", "calibration": len(calibration)}
            )

    class Quantizers:
        @hookimpl
        def register_quantizers(self, register):
            register("copy", Copy())

    pm = get_plugin_manager(plugins=[("quantizers", Quantizers())])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = [
        {"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": ["neg", "pos"][i % 2]}
        for i in range(16)
    ]
    result = export_bundle(
        model,
        tokenizer,
        "sequence_classification",
        examples,
        tmp_path / "bundle",
        exporter="torch",
        quantize="copy",
        labels=["neg", "pos"],
        pm=pm,
        bench=False,
        log=lambda m: None,
    )
    assert result.manifest["quantization"] == {"name": "copy", "calibration": 16}
    assert result.parity.passed and result.parity.figures["max_abs_diff"] < 1e-4


# -------------------------------------------------------------------------
# Export
# -------------------------------------------------------------------------


@pytest.mark.slow  # exports a bundle
def test_hook_on_export_sees_the_proven_bundle_and_cannot_fail_the_export(tiny_llama_dir, tmp_path):
    """Called once the bundle passed its gate and sits at --out, with the manifest as written; its
    line joins the export's output; a plugin that raises costs a warning, never the bundle."""
    from tunewright.edge import export_run

    seen = []

    class Announcer:
        @hookimpl
        def on_export(self, run_dir, bundle, manifest):
            on_disk = json.loads((Path(bundle) / "manifest.json").read_text())
            seen.append((run_dir, bundle, manifest == on_disk, manifest["parity"]["passed"]))
            return f"announced {Path(bundle).name}"

    class Broken:
        @hookimpl
        def on_export(self, bundle):
            raise RuntimeError("the registry is down")

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    out = tmp_path / "run"
    _, pm = train(chat_job(tiny_llama_dir, data, out))
    pm.register(Announcer(), name="announcer")
    lines: list[str] = []
    result = export_run(
        out, tmp_path / "bundle", quantize="none", bench=False, pm=pm, log=lines.append
    )
    assert seen == [(str(out), str(result.bundle), True, True)]
    assert lines[-1] == "announced bundle"

    pm.register(Broken(), name="broken")
    with pytest.warns(UserWarning, match="an on_export hook failed .*the registry is down"):
        again = export_run(
            out, tmp_path / "bundle2", quantize="none", bench=False, pm=pm, log=lines.append
        )
    assert (again.bundle / "manifest.json").is_file()
