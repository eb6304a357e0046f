"""The tensorboard and mlflow trackers, read back with TensorBoard's event reader and MLflow's
client; an interrupted run resumed keeps what each tracker wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from experiments_jobs import chat_data, chat_job

from tunewright import ConfigError, get_plugin_manager, hookimpl, load_config, run_job
from tunewright.cli import main

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


class StopAt:
    """Ctrl-C at a step, once."""

    def __init__(self, step):
        self.step = step

    @hookimpl
    def on_step_end(self, run, step, logs):
        if step == self.step and "loss" in logs:
            self.step = None
            raise KeyboardInterrupt


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return events, {
        t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]
    }


@pytest.mark.slow  # exports a bundle
def test_tensorboard_and_mlflow_record_a_run_and_continue_it_on_resume(tiny_llama_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    raw = chat_job(
        tiny_llama_dir,
        chat_data(tmp_path / "chat.jsonl"),
        out,
        trackers=["jsonl", "tensorboard", "mlflow"],
        mlflow={"experiment": "fruit"},
    )
    raw["training"]["save_steps"] = 2
    pm = get_plugin_manager(plugins=[("stop", StopAt(3))])
    config = load_config(raw, pm.registries)
    with pytest.raises(KeyboardInterrupt):
        run_job(config, pm, echo=lambda m: None)
    record = json.loads((out / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    assert record["tracking_uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    assert client.get_run(record["run_id"]).info.status == "KILLED"
    first_events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))

    run_job(config, pm, resume=True, echo=lambda m: None)

    # TensorBoard: one folder, the first event file kept, every step's loss, the validation
    # curve from the baseline on, and the config as hyperparameters
    assert set(first_events) < set((out / "tensorboard").glob("events.out.tfevents.*"))
    events, scalars = _scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    # resumed from checkpoint-2 with purge_step 3: the first file's steps 3 on are hidden
    assert [s for s, _ in scalars["eval/loss"]][:2] == [0, 2]
    assert {s for s, _ in scalars["eval/loss"]} == {0, 2, 4}
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    # MLflow: the same run continued, params, per-step metrics, tags, artifacts
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == record["run_id"]
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "fruit"
    assert run.data.params["training.learning_rate"] == "0.005"
    assert {run.data.tags[k] for k in ("task", "method")} == {"chat", "lora"}
    assert run.data.tags["model"] == str(tiny_llama_dir)
    steps = [m.step for m in client.get_metric_history(record["run_id"], "loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4] and steps[:3] == [1, 2, 3]  # step 3: logged again
    eval_steps = [m.step for m in client.get_metric_history(record["run_id"], "eval_loss")]
    assert eval_steps[:2] == [0, 2] and set(eval_steps) == {0, 2, 4}
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"eval.json", "report.png", "adapter"} <= artifacts
    assert (out / "mlartifacts").is_dir()  # beside the database, not ./mlruns
    # tunewright export of the run logs the bundle's manifest to the same MLflow run
    bundle = tmp_path / "bundle"
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(out), "--out", str(bundle), "--quantize", "none", "--no-bench"])
    assert exit_.value.code == 0
    assert [a.path for a in client.list_artifacts(record["run_id"], "bundle")] == [
        "bundle/manifest.json"
    ]
    (tmp_path / "d1").mkdir()
    logged = client.download_artifacts(
        record["run_id"], "bundle/manifest.json", str(tmp_path / "d1")
    )
    assert json.loads(Path(logged).read_text()) == json.loads(
        (bundle / "manifest.json").read_text()
    )
    # and runs log-bundle does it by hand, for a bundle exported elsewhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "manifest.json").write_text('{"format": "tunewright-bundle", "from": "elsewhere"}')
    with pytest.raises(SystemExit) as exit_:
        main(["runs", "log-bundle", str(out), str(elsewhere)])
    assert exit_.value.code == 0
    (tmp_path / "d2").mkdir()
    logged = client.download_artifacts(
        record["run_id"], "bundle/manifest.json", str(tmp_path / "d2")
    )
    assert json.loads(Path(logged).read_text())["from"] == "elsewhere"


def test_tracker_settings_are_checked_with_the_config(tiny_llama_dir, tmp_path):
    pm = get_plugin_manager()
    raw = chat_job(tiny_llama_dir, tmp_path / "x.jsonl", tmp_path / "run", trackers=["mlflow"])
    with pytest.raises(ConfigError, match="mlflow.tracking_uri: 'runs/db' is not a URI"):
        load_config({**raw, "mlflow": {"tracking_uri": "runs/db"}}, pm.registries)
    with pytest.raises(
        ConfigError, match=r"mlflow.experimnt: unknown key; did you mean 'mlflow.experiment'"
    ):
        load_config({**raw, "mlflow": {"experimnt": "x"}}, pm.registries)
