"""The command line as a user meets it: exit codes, messages, and a third-party plugin installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from samples import chat_rows, classification_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def tw(*args, cwd=None, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "tunewright", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def write_config(path: Path, **changes) -> Path:
    raw = {
        "model": "smollm2-135m-instruct",
        "task": "chat",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": "data/train.jsonl", "validation": 0.1},
        "training": {"epochs": 1, "max_steps": 60, "batch_size": 8, "learning_rate": 2.0e-4},
        "output": "runs/chat-lora",
    }
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plugins_lists_builtins_as_json():
    result = tw("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    methods = {m for p in plugins.values() for m in p["registered"].get("methods", [])}
    assert {"lora", "dora", "ia3", "prompt_tuning", "adapter", "full", "freeze"} <= methods
    assert plugins["tasks"]["distribution"] == "tunewright" and plugins["tasks"]["version"]
    text = tw("plugins")
    assert "methods: lora, dora" in text.stdout and "built-in" in text.stdout


def test_typo_in_config_exits_2_and_names_the_key(tmp_path):
    config = write_config(tmp_path / "job.yaml")
    config.write_text(config.read_text().replace("learning_rate", "learnin_rate"))
    result = tw("train", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "training.learnin_rate: unknown key; did you mean 'training.learning_rate'?"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_unknown_model_name_lists_registered_models(tmp_path):
    config = write_config(tmp_path / "job.yaml", model="smollm3-tiny")
    write_jsonl(tmp_path / "data" / "train.jsonl", chat_rows(60))
    result = tw("train", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "'smollm3-tiny' is neither a registered model (" in result.stderr
    listed = result.stderr.split("registered model (", 1)[1].split(")", 1)[0].split(", ")
    assert {"minilm-l6", "smollm2-135m-instruct", "mobilenet-v2"} <= set(listed)
    assert listed == sorted(listed)


def test_unknown_method_exits_2(tmp_path):
    config = write_config(tmp_path / "job.yaml", method="loar")
    result = tw("train", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "unknown method 'loar'; did you mean 'lora'?" in result.stderr


def test_missing_data_file_exits_2_before_loading_the_model(tmp_path):
    config = write_config(tmp_path / "job.yaml")
    result = tw("train", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "data/train.jsonl" in result.stderr and "not found" in result.stderr
    assert "loading" not in result.stderr  # failed before the model was touched
    assert not (tmp_path / "runs" / "chat-lora" / "adapter").exists()


def test_set_overrides_reach_the_job(tmp_path):
    config = write_config(tmp_path / "job.yaml")
    result = tw("train", str(config), "--set", "training.batch_size=eight", cwd=tmp_path)
    assert (
        result.returncode == 2
        and "training.batch_size: expected an integer, got 'eight'" in result.stderr
    )


def chat_file_with_problems(
    path: Path, rows: list[dict], not_json: int, robot: int, unanswered: int
) -> Path:
    """``rows`` as chat JSONL but for three broken lines (0-based): one that is not JSON, one with
    an unknown role, one without an assistant reply."""
    lines = [json.dumps(r) for r in rows]
    lines[not_json] = "{not json"
    lines[robot] = json.dumps(
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    )
    lines[unanswered] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validate_reports_every_problem_with_its_line(tmp_path):
    data = chat_file_with_problems(tmp_path / "train.jsonl", chat_rows(12), 2, 4, 6)
    result = tw("validate", str(data), "--task", "chat")
    assert result.returncode == 2
    assert (
        f"{data}:3:" in result.stdout
        and f"{data}:5:" in result.stdout
        and f"{data}:7:" in result.stdout
    )
    assert "robot" in result.stdout
    report = json.loads(tw("validate", str(data), "--json").stdout)
    assert not report["ok"] and {e["location"] for e in report["errors"]} >= {
        f"{data}:3",
        f"{data}:5",
        f"{data}:7",
    }


def test_validate_summarises_clean_data(tmp_path):
    data = write_jsonl(tmp_path / "labels.jsonl", classification_rows(40))
    result = tw("validate", str(data), "--task", "classification", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["summary"]["examples"] == 40
    assert sum(report["summary"]["labels"].values()) == 40
    assert any("50 or more are recommended" in w["message"] for w in report["warnings"])


def test_empty_file_is_an_error(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n\n")
    result = tw("validate", str(data))
    assert result.returncode == 2
    assert f"error: {data}: the file is empty (expected a data file ending in" in result.stderr


def test_validate_without_task_takes_the_task_the_format_names(tmp_path):
    data = write_jsonl(tmp_path / "labels.jsonl", classification_rows(60))
    result = tw("validate", str(data), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["task"] == "classification" and report["summary"]["format"] == "text-label"
    assert sum(report["summary"]["labels"].values()) == 60  # checked as labelled text, not as chat


def test_validate_without_config_checks_length_against_the_model_context(tmp_path):
    rows = chat_rows(60)
    # 10,000 words: longer than SmolLM2's 8,192-token context
    rows[7] = {
        "messages": [
            {"role": "user", "content": "please " * 10_000},
            {"role": "assistant", "content": "no"},
        ]
    }
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    result = tw("validate", str(data))
    assert result.returncode == 2, result.stdout
    assert f"{data}:8: " in result.stdout
    assert "tokens, longer than the context length of smollm2-135m-instruct 8192" in result.stdout
    # with a config, data.max_length is the limit
    config = write_config(tmp_path / "job.yaml", **{"data.train": str(data), "data.max_length": 64})
    rows[7] = chat_rows(1)[0]
    rows[9] = {
        "messages": [
            {"role": "user", "content": "word " * 80},
            {"role": "assistant", "content": "ok"},
        ]
    }
    write_jsonl(data, rows)
    result = tw("validate", str(data), "--config", str(config))
    assert result.returncode == 2 and f"{data}:10: " in result.stdout
    assert "tokens, longer than data.max_length 64" in result.stdout


def test_validate_image_parts_need_a_vision_task(tmp_path):
    rows = chat_rows(60)
    rows[3]["messages"][0]["content"] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "cat.png"}},
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    result = tw("validate", str(data), "--task", "chat")
    assert result.returncode == 2
    assert (
        f"{data}:4: 1 image part: the chat task trains on text only; image parts need a vision task"
        in result.stdout
    )
    assert "Traceback" not in result.stderr


def test_overwrite_never_deletes_a_folder_tunewright_did_not_make(tmp_path):
    """`output: .` with --overwrite used to delete the data and the config, then crash."""
    write_jsonl(tmp_path / "data" / "train.jsonl", chat_rows(60))
    config = write_config(tmp_path / "job.yaml", output=".")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = tw("train", str(config), "--overwrite", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        "--overwrite replaces only a run directory" in result.stderr
        and "nothing was deleted" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_init_writes_a_config_that_validates(tmp_path):
    assert tw("init", cwd=tmp_path).returncode == 0
    from tunewright import get_plugin_manager
    from tunewright.config import load_config, read_yaml

    config = load_config(read_yaml(tmp_path / "tunewright.yaml"), get_plugin_manager().registries)
    assert config.method == "lora" and config.training.save_steps == 20
    assert tw("init", cwd=tmp_path).returncode == 2  # never overwrites silently


@pytest.mark.slow
def test_eval_scores_a_run_on_a_file(tiny_bert_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", classification_rows(150))
    test = write_jsonl(tmp_path / "test.jsonl", classification_rows(60, seed=3))
    config = write_config(
        tmp_path / "job.yaml",
        model=str(tiny_bert_dir),
        task="classification",
        method="full",
        **{
            "data.train": str(data),
            "training.max_steps": 80,
            "training.learning_rate": 2e-3,
            "output": str(tmp_path / "run"),
        },
    )
    raw = yaml.safe_load(config.read_text())
    del raw["lora"]
    config.write_text(yaml.safe_dump(raw))
    trained = tw("train", str(config))
    assert trained.returncode == 0, trained.stderr
    result = tw("eval", str(tmp_path / "run"), "--data", str(test), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"accuracy", "precision", "recall", "f1", "loss"}
    assert metrics["accuracy"] > 0.6  # three balanced classes: chance is a third
    # on the run's own held-out split, eval gives exactly the figures the job recorded
    again = json.loads(
        tw(
            "eval",
            str(tmp_path / "run"),
            "--data",
            str(tmp_path / "run" / "data" / "validation.jsonl"),
            "--json",
        ).stdout
    )
    recorded = json.loads((tmp_path / "run" / "eval.json").read_text())["final"]
    assert again == pytest.approx(recorded, rel=1e-4)
    unknown = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "sideways"}] * 12)
    refused = tw("eval", str(tmp_path / "run"), "--data", str(unknown))
    assert refused.returncode == 2 and "sideways" in refused.stderr


@pytest.mark.slow
def test_third_party_plugin_installs_lists_and_trains(tmp_path):
    """Installed with pip into a virtual environment of the test's own (over this one's
    packages), from a copy of its source, so nothing outside tmp_path changes."""
    import shutil

    venv = tmp_path / "venv"
    # without a pip of its own, this environment's pip and setuptools install into it
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
        timeout=120,
    )
    python = str(venv / "bin" / "python")
    source = shutil.copytree(ROOT / "tests" / "example_plugin", tmp_path / "example_plugin")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "-q",
            "install",
            "--no-deps",
            "--no-build-isolation",
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )

    def in_venv(*args, env=None):
        return subprocess.run(
            [python, "-m", "tunewright", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=900,
        )

    listed = {p["name"]: p for p in json.loads(in_venv("plugins", "--json").stdout)}
    assert listed["bitfit"]["distribution"] == "tunewright-bitfit"
    assert listed["bitfit"]["version"] == "0.2.0" and not listed["bitfit"]["builtin"]
    assert listed["bitfit"]["registered"] == {"methods": ["bitfit"]}

    data = write_jsonl(tmp_path / "train.jsonl", classification_rows(120))
    # BitFit tunes biases on top of pretrained features: the real MiniLM, not a random one
    config = write_config(
        tmp_path / "job.yaml",
        model="minilm-l6",
        task="classification",
        method="bitfit",
        **{
            "data.train": str(data),
            "training.max_steps": 40,
            "training.learning_rate": 5e-3,
            "output": str(tmp_path / "run"),
        },
    )
    raw = yaml.safe_load(config.read_text())
    del raw["lora"]
    raw["bitfit"] = {"train_head": True}
    config.write_text(yaml.safe_dump(raw))
    result = in_venv("train", str(config))
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["final"]["accuracy"] > results["baseline"]["accuracy"] + 0.2
    used = {p["name"]: p for p in json.loads((tmp_path / "run" / "plugins.json").read_text())}
    assert used["bitfit"]["used"] == ["methods:bitfit"] and used["bitfit"]["version"] == "0.2.0"
    # its config section is validated by its own schema
    raw["bitfit"] = {"train_heads": True}
    config.write_text(yaml.safe_dump(raw))
    bad = in_venv("train", str(config), "--overwrite")
    assert (
        bad.returncode == 2
        and "bitfit.train_heads: unknown key; did you mean 'bitfit.train_head'?" in bad.stderr
    )
    # the allow-list keeps it out
    hidden = in_venv("plugins", "--json", env={"TUNEWRIGHT_LOAD_PLUGINS": "nothing"})
    assert "bitfit" not in {p["name"] for p in json.loads(hidden.stdout)}
    # this environment never saw it
    assert "bitfit" not in {p["name"] for p in json.loads(tw("plugins", "--json").stdout)}


@pytest.mark.parametrize(
    ("how", "code", "said"), [("sigterm", 143, "terminated"), ("ctrl-c", 130, "interrupted")]
)
def test_sigterm_and_ctrl_c_unwind_the_command_and_exit_with_their_codes(
    monkeypatch, capsys, how, code, said
):
    """A real SIGTERM to this process mid-command (as a scheduler preempting the job sends it)
    raises where the command is, so its ``finally`` runs (there a deployed server stops its
    SuperLink); Ctrl-C likewise. click wraps both in ``Abort``: neither may end as "aborted", 1."""
    import signal

    import click

    from tunewright import cli as cli_module

    cleaned = []

    @click.command("work")
    def work() -> None:
        try:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 5)  # the handler raises before this returns
            raise KeyboardInterrupt
        finally:
            cleaned.append(how)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(
        cli_module, "build_cli", lambda pm: click.Group("tunewright", commands={"work": work})
    )
    monkeypatch.setattr(cli_module, "EXIT_GRACE_SECONDS", 0.1)
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(["work"])
    assert exit_.value.code == code
    time.sleep(0.5)  # main() was handed argv: it does not end this process after the grace
    assert cleaned == [how]
    assert said in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whatever embeds main()


@pytest.mark.parametrize("checkpointed", [True, False])
def test_an_interrupted_train_points_to_resume_only_when_a_checkpoint_is_kept(
    tmp_path, monkeypatch, capsys, checkpointed
):
    from tunewright import cli as cli_module
    from tunewright import run as run_module

    config = write_config(tmp_path / "job.yaml", output=str(tmp_path / "run"))

    def interrupted_job(job, pm, **kwargs):
        if checkpointed:  # what the training loop leaves after its save at step 3
            (Path(job.output) / "checkpoints" / "checkpoint-3").mkdir(parents=True)
            (Path(job.output) / "checkpoints" / "checkpoint-3" / "state.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_job", interrupted_job)
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(["train", str(config)])
    assert exit_.value.code == 130
    said = capsys.readouterr().err
    assert said.splitlines()[-1] == "interrupted"
    hint = f"checkpoint-3 is kept: tunewright train {config} --resume continues from it"
    assert (hint in said) is checkpointed


def test_an_interrupted_command_exits_although_a_library_left_a_thread_waiting(tmp_path):
    """Python's exit joins every non-daemon thread: one that waits forever (Flower's simulation
    threads on Ray workers that are gone) must not hold an interrupted command past its grace."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import threading\nimport click\nfrom tunewright import cli\n"
        "cli.EXIT_GRACE_SECONDS = 1.0\n"
        "@click.command('work')\n"
        "def work():\n"
        "    threading.Thread(target=threading.Event().wait).start()  # never ends, not a daemon\n"
        "    raise KeyboardInterrupt\n"
        "cli.build_cli = lambda pm: click.Group('tunewright', commands={'work': work})\n"
        "import sys\nsys.argv = ['tunewright', 'work']\n"
        "cli.main()  # as the console script calls it: this process is the command's\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "interrupted"


def test_validate_counts_only_usable_examples_and_their_tokens(tmp_path, tiny_llama_dir):
    """Of 5 lines, one is not JSON and two break the chat rules: 2 examples are usable, and
    only their tokens are counted."""
    from tunewright import get_plugin_manager
    from tunewright.validate import validate_file

    rows = chat_rows(5)
    data = chat_file_with_problems(tmp_path / "train.jsonl", rows, 1, 2, 3)
    pm = get_plugin_manager()
    report = validate_file(data, "chat", pm, model=str(tiny_llama_dir))
    summary = report.to_dict()["summary"]
    assert summary["examples"] == 2
    task = pm.registries.get("tasks", "chat")
    tokenizer = task.load_tokenizer(tiny_llama_dir)
    assert summary["tokens"]["total"] == sum(
        len(task.tokenize(rows[i], tokenizer)["input_ids"]) for i in (0, 4)
    )
    assert any(p.message.startswith("2 usable examples of 4;") for p in report.errors)
    assert "2 examples" in report.render()
