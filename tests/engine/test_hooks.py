"""The registration hooks a third-party plugin uses, each through a real job or command."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from samples import chat_rows
from tunewright import DataError, get_plugin_manager, hookimpl
from tunewright.config import load_config
from tunewright import run_job


class TsvChat:
    """A dataset format a plugin adds: one prompt<TAB>reply pair per line."""

    suffixes = (".tsv",)

    def read(self, path: Path):
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            if line.strip():
                yield number, line

    def detect(self, record) -> bool:
        return isinstance(record, str) and "\t" in record

    def to_example(self, record):
        if record.count("\t") != 1:
            raise DataError("expected one tab between prompt and reply")
        prompt, reply = record.split("\t")
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


class Recorder:
    """A tracker a plugin adds; it sees every logged step."""

    seen: list[tuple[int, dict]] = []

    def __init__(self, run):
        Recorder.made_for = run.run_dir

    def log(self, step, metrics):
        Recorder.seen.append((step, metrics))

    def close(self):
        Recorder.seen.append((-1, {"closed": True}))


class Plugin:
    @hookimpl
    def register_dataset_formats(self, register):
        register("tsv-chat", TsvChat())

    @hookimpl
    def register_trackers(self, register):
        register("recorder", Recorder)

    @hookimpl
    def register_runners(self, register):
        def halves(run):
            """A runner that trains the job in two halves, from public names only."""
            from tunewright import train

            first = train(run, stop_at_step=run.config.training.max_steps // 2)
            second = train(run, resume_from=first.checkpoint)
            second.train_tokens += first.train_tokens
            return second

        register("halves", halves)

    @hookimpl
    def register_commands(self, cli):
        @cli.command()
        @click.argument("name")
        def hello(name):
            """Say hello."""
            click.echo(f"hello {name}")


def test_plugin_format_tracker_and_runner_drive_a_job(tiny_llama_dir, tmp_path):
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{r['messages'][0]['content']}\t{r['messages'][1]['content']}\n" for r in chat_rows(60)))
    pm = get_plugin_manager(plugins=[("extras", Plugin())])
    raw = {"model": str(tiny_llama_dir), "task": "chat", "method": "lora", "runner": "halves",
           "trackers": ["jsonl", "recorder"],
           "data": {"train": str(data), "validation": 0.2, "max_length": 64},
           "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1,
                        "save_steps": 3, "precision": "fp32"},
           "output": str(tmp_path / "run")}
    Recorder.seen = []
    config = load_config(raw, pm.registries)
    before = config.model_dump()
    result = run_job(config, pm, echo=lambda m: None)
    assert result.global_step == 6
    assert config.model_dump() == before  # the runner changed nothing it was given
    steps = [step for step, metrics in Recorder.seen if "loss" in metrics]
    assert steps == [1, 2, 3, 4, 5, 6]  # the second half resumed from the first's checkpoint
    assert Recorder.seen[-1] == (-1, {"closed": True}) and Recorder.made_for == tmp_path / "run"
    # two halves are one run: the same losses as the built-in local runner's
    local = load_config({**raw, "runner": "local", "output": str(tmp_path / "local")}, pm.registries)
    Recorder.seen = []
    run_job(local, pm, echo=lambda m: None)
    read = lambda out: [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert read(tmp_path / "run") == pytest.approx(read(tmp_path / "local"), rel=1e-5)
    validation = [json.loads(line) for line in (tmp_path / "run" / "data" / "validation.jsonl").read_text().splitlines()]
    assert validation[0]["messages"][0]["role"] == "user"  # read through the plugin's format


def test_registration_hooks_are_called_through_pluggy():
    """A wrapper implementation runs around the plugin's own call, as pluggy promises; calling
    the function directly would only have made a generator."""

    class Method:
        config_class = None
        reference = "https://example.org"

    class Wrapping:
        @hookimpl(wrapper=True)
        def register_methods(self, register):
            register("wrapped", Method())
            return (yield)

    pm = get_plugin_manager(plugins=[("wrapping", Wrapping())])
    assert "wrapped" in pm.registries.kind("methods")
    assert pm.registries.owner("methods", "wrapped") == "wrapping"


def test_plugin_format_errors_carry_the_line(tmp_path):
    from tunewright.data import read_examples

    data = tmp_path / "pairs.tsv"
    data.write_text("hi\tthere\nno\ttabs\there\n")
    pm = get_plugin_manager(plugins=[("extras", Plugin())])
    examples, locations, problems = read_examples(data, pm.registries, format="tsv-chat")
    assert len(examples) == 1 and locations == [f"{data}:1"]
    assert [str(p) for p in problems] == [f"{data}:2: expected one tab between prompt and reply"]


def test_plugin_command_joins_the_cli():
    from tunewright.cli import build_cli

    group = build_cli(get_plugin_manager(plugins=[("extras", Plugin())]))
    result = CliRunner().invoke(group, ["hello", "edge"])
    assert result.exit_code == 0 and result.output == "hello edge\n"
    assert "hello" not in build_cli(get_plugin_manager()).commands  # a fresh group per manager


def test_plugin_exporter_is_chosen_by_name(tiny_bert_dir, tmp_path):
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
            torch.onnx.export(model, (ids, torch.ones_like(ids)), str(out_dir / "model.onnx"),
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"},
                                            "logits": {0: "b"}}, dynamo=False, opset_version=17)
            return ExportedModel(out_dir, task_kind, exporter="plain")

    class ExporterPlugin:
        @hookimpl
        def register_exporters(self, register):
            register("plain", PlainExporter())

    pm = get_plugin_manager(plugins=[("plain", ExporterPlugin())])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = [{"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": ["neg", "pos"][i % 2]} for i in range(16)]
    result = export_bundle(model, tokenizer, "sequence_classification", examples, tmp_path / "bundle",
                           exporter="plain", quantize="none", labels=["neg", "pos"], pm=pm, bench=False,
                           log=lambda m: None)
    assert calls == ["sequence_classification"]
    assert result.manifest["exporter"]["name"] == "plain" and result.parity.passed
