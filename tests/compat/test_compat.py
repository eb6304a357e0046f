"""A plugin written to tunewright 0.1.0's documented contracts keeps working (issue 17, section 1).

``tunewright_compat_010`` (beside this file, frozen) is installed the way pip leaves a package: its
module and a dist-info carrying the entry point its ``pyproject.toml`` declares, on ``sys.path``.
It is then found through the entry-point group like any third-party plugin and run through real
jobs on a tiny model. Each older form it uses works and is reported with a
``PluginDeprecationWarning`` naming the plugin and the form to write instead.
"""

from __future__ import annotations

import configparser
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from tunewright import get_plugin_manager, load_config, run_job
from tunewright.compat import PluginDeprecationWarning

HERE = Path(__file__).resolve().parent
MODULE = "tunewright_compat_010"


def read_project(path: Path) -> dict:
    """``name``, ``version`` and ``entry-points`` of a pyproject.toml as plain as this one (no
    tomllib: Python 3.10 has none)."""
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str
    parser.read_string(path.read_text())
    unquote = lambda value: value.strip().strip('"')
    entries = parser["project.entry-points.tunewright"]
    return {
        "name": unquote(parser["project"]["name"]),
        "version": unquote(parser["project"]["version"]),
        "entry-points": {"tunewright": {k: unquote(v) for k, v in entries.items()}},
    }


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The frozen package, laid out as ``pip install tests/compat`` lays it out."""
    project = read_project(HERE / "pyproject.toml")
    site = tmp_path / "site-packages"
    shutil.copytree(HERE / MODULE, site / MODULE, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    entries = project["entry-points"]["tunewright"]
    (info / "entry_points.txt").write_text(
        "[tunewright]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
    )
    monkeypatch.syspath_prepend(str(site))
    yield project
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]


def plugin_manager(project):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_plugin_manager(env={"TUNEWRIGHT_LOAD_PLUGINS": project["name"]})
        assert pm.registries.kind("trackers")  # registration is where older forms are recognised
    return pm, [str(w.message) for w in caught if issubclass(w.category, PluginDeprecationWarning)]


def tsv_data(path: Path, n: int = 48) -> Path:
    fruits = {"apple": "red", "banana": "yellow", "lime": "green", "plum": "purple"}
    lines = [
        f"What colour is a {f}? (#{i})\tA {f} is {c}."
        for i in range(n)
        for f, c in [sorted(fruits.items())[i % len(fruits)]]
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def job(model_dir: Path, data: Path, out: Path, **changes) -> dict:
    raw = {
        "model": str(model_dir),
        "task": "chat",
        "method": "normtune",
        "normtune": {"scale": 1.0},
        "data": {"train": str(data), "format": "tsvchat", "validation": 0.25, "max_length": 64},
        "training": {
            "max_steps": 4,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "precision": "fp32",
        },
        "trackers": ["jsonl", "legacylog"],
        "output": str(out),
    }
    raw.update(changes)
    return raw


def test_the_plugin_is_found_and_each_older_form_is_named(installed):
    pm, deprecations = plugin_manager(installed)
    registered = pm.registries
    assert registered.owner("methods", "normtune") == "compat010"
    assert registered.owner("dataset_formats", "tsvchat") == "compat010"
    # exactly the two contracts whose form changed: the tracker factory and the runner
    assert len(deprecations) == 2, deprecations
    runner, tracker = sorted(
        deprecations
    )  # "... the runner ..." sorts before "... the tracker ..."
    who = "plugin 'compat010' (distribution tunewright-compat-010 0.1.0)"
    assert tracker.startswith(who) and "'legacylog' as factory(run_dir, config)" in tracker
    assert "write factory(run)" in tracker
    assert (
        runner.startswith(who)
        and "'plainloop' as runner(job)" in runner
        and "write runner(run)" in runner
    )


def test_a_job_runs_its_method_format_tracker_and_lifecycle_hooks(
    installed, tiny_llama_dir, tmp_path
):
    pm, _ = plugin_manager(installed)
    out = tmp_path / "run"
    config = load_config(job(tiny_llama_dir, tsv_data(tmp_path / "chat.tsv"), out), pm.registries)
    result = run_job(config, pm, echo=lambda m: None)
    assert result.global_step == 4
    # the tracker made as factory(run_dir, config) got the run directory and the config
    rows = [json.loads(line) for line in (out / "legacy-log.jsonl").read_text().splitlines()]
    assert rows[0] == {"made": True, "model": str(tiny_llama_dir)}
    assert [r["step"] for r in rows[1:] if "loss" in r] == [1, 2, 3, 4]
    assert [r["eval_stage"] for r in rows[1:] if "eval_stage" in r] == ["baseline", "final"]
    events = [json.loads(line) for line in (out / "legacy-events.jsonl").read_text().splitlines()]
    hooks = [e["hook"] for e in events]
    begin = hooks.index("on_train_begin")
    assert [e["step"] for e in events[:begin] if e["hook"] == "on_evaluate"] == [0]  # the baseline
    assert hooks[-1] == "on_train_end"
    assert [e["step"] for e in events if e["hook"] == "on_checkpoint"] == [2, 4]
    assert all(e["exists"] for e in events if e["hook"] == "on_checkpoint")
    assert [e["step"] for e in events if e["hook"] == "on_evaluate"] == [0, 4]
    assert {e["step"] for e in events if e["hook"] == "on_step_end"} >= {1, 2, 3, 4}
    # the method trained only the norms, and saved them its own way
    assert (out / "adapter" / "norms.pt").is_file()
    final = json.loads((out / "eval.json").read_text())
    assert final["final"]["loss"] < final["baseline"]["loss"]


def test_a_runner_taking_the_job_trains_it(installed, tiny_llama_dir, tmp_path):
    pm, _ = plugin_manager(installed)
    out = tmp_path / "run"
    config = load_config(
        job(tiny_llama_dir, tsv_data(tmp_path / "chat.tsv"), out, runner="plainloop"), pm.registries
    )
    result = run_job(config, pm, echo=lambda m: None)
    assert result.global_step == 4 and result.metrics["train_loss"] > 0
    final = json.loads((out / "eval.json").read_text())
    assert final["final"]["loss"] < final["baseline"]["loss"]
    events = [
        json.loads(line)["hook"] for line in (out / "legacy-events.jsonl").read_text().splitlines()
    ]
    assert events[-1] == "on_train_end"


class TaskOf010:
    """A task with 0.1.0's Task protocol: ``greater_is_better`` (no ``metric_directions``),
    ``tokenize(example, tokenizer, max_length, labels)``, ``count_tokens``, no ``validate``. It
    hands the work to the built-in chat task, as a plugin extending it would."""

    model_kind = "causal_lm"
    primary_metric = "mean_token_accuracy"
    greater_is_better = True

    def __init__(self):
        from tunewright.plugins.tasks import ChatTask

        self.chat = ChatTask()
        self.max_lengths: list[int] = []

    def load_tokenizer(self, path, trust_remote_code=False):
        return self.chat.load_tokenizer(path, trust_remote_code=trust_remote_code)

    def label_set(self, examples):
        return None

    def load_model(self, path, labels, config, tokenizer=None):
        return self.chat.load_model(path, labels, config, tokenizer=tokenizer)

    def tokenize(self, example, tokenizer, max_length, labels=None):
        self.max_lengths.append(max_length)
        return self.chat.tokenize(example, tokenizer, labels=labels)

    def count_tokens(self, example, tokenizer):
        return len(self.tokenize(example, tokenizer, 10**6)["input_ids"])

    def collate(self, features, tokenizer):
        return self.chat.collate(features, tokenizer)

    def metrics(self, model, batches):
        return self.chat.metrics(model, batches)


def test_a_task_of_010_is_adapted_and_trains(installed, tiny_llama_dir, tmp_path):
    from tunewright import hookimpl

    task = TaskOf010()

    class Tasks:
        @hookimpl
        def register_tasks(self, register):
            register("chat010", task)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_plugin_manager(
            env={"TUNEWRIGHT_LOAD_PLUGINS": installed["name"]}, plugins=[("tasks010", Tasks())]
        )
        registered = pm.registries.tasks["chat010"]
    said = sorted(
        str(w.message)
        for w in caught
        if issubclass(w.category, PluginDeprecationWarning) and "tasks010" in str(w.message)
    )
    assert len(said) == 3 and all(m.startswith("plugin 'tasks010' uses ") for m in said)
    assert "Task.greater_is_better" in said[0] and "write Task.metric_directions" in said[0]
    assert "Task.tokenize(example, tokenizer, max_length, labels)" in said[1]
    assert "a Task without validate" in said[2]
    assert dict(registered.metric_directions) == {"loss": "min", "mean_token_accuracy": "max"}
    out = tmp_path / "run"
    raw = job(
        tiny_llama_dir, tsv_data(tmp_path / "chat.tsv"), out, task="chat010", trackers=["jsonl"]
    )
    result = run_job(load_config(raw, pm.registries), pm, echo=lambda m: None)
    assert result.global_step == 4 and task.max_lengths  # tokenized through its 0.1.0 signature
    final = json.loads((out / "eval.json").read_text())
    assert (
        final["primary_metric"] == "mean_token_accuracy"
        and final["final"]["loss"] < final["baseline"]["loss"]
    )


def test_the_command_line_shows_the_deprecations(installed, tmp_path):
    """Python hides a DeprecationWarning raised outside __main__; the CLI shows a plugin's."""
    import os
    import subprocess

    site = tmp_path / "site-packages"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "TUNEWRIGHT_LOAD_PLUGINS": installed["name"],
    }
    out = subprocess.run(
        [sys.executable, "-m", "tunewright", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compat010" in out.stdout
    warned = [line for line in out.stderr.splitlines() if "PluginDeprecationWarning" in line]
    assert len(warned) == 2 and all("plugin 'compat010'" in line for line in warned), out.stderr[
        -2000:
    ]


def test_only_the_older_forms_are_taken_for_them():
    """A current factory or runner with extra optional parameters is used as it is, unwarned."""
    from tunewright import hookimpl

    made = []

    def factory(run, verbose=False):
        made.append(run)

    def runner(run, *, rounds=1):
        return rounds

    class Current:
        @hookimpl
        def register_trackers(self, register):
            register("current", factory)

        @hookimpl
        def register_runners(self, register):
            register("current", runner)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registries = get_plugin_manager(env={}, plugins=[("current", Current())]).registries
    assert not [w for w in caught if issubclass(w.category, PluginDeprecationWarning)]
    assert registries.trackers["current"] is factory and registries.runners["current"] is runner
