"""tunewright sweep: the space checked before any trial, trials as runs, failures and Ctrl-C
recorded, the study continued, the summary; runs compare on the sweep's folder."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from experiments_jobs import chat_data, chat_job

from tunewright import JobFailed, get_plugin_manager, hookimpl, load_config, read_yaml
from tunewright.cli import main

optuna = pytest.importorskip("optuna")


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr()


@pytest.fixture
def job(tiny_llama_dir, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            chat_job(tiny_llama_dir, chat_data(tmp_path / "chat.jsonl"), tmp_path / "runs/run")
        )
    )
    return path


@pytest.mark.parametrize(
    "space, expected",
    [
        (
            {"training.learnig_rate": {"log_uniform": [1e-5, 1e-3]}},
            "training.learnig_rate: unknown key; did you mean 'training.learning_rate'?",
        ),
        ({"lorra.r": {"choice": [4, 8]}}, "lorra: unknown key; did you mean 'lora'?"),
        ({"lora.r": {"choice": []}}, "lora.r: choice needs a non-empty list of values, got []"),
        ({"lora.r": {"normal": [1, 2]}}, "lora.r: unknown distribution 'normal'"),
        ({"lora.r": {"int": [4.5, 8]}}, "lora.r: int needs [low, high], two integers"),
        ({"lora.r": [4, 8]}, "lora.r: expected one distribution as a mapping"),
        ({"training.learning_rate": {"log_uniform": [0, 1]}}, "log_uniform needs low > 0"),
        ({"training.lr_scheduler": {"choice": ["linear", "step"]}}, "training.lr_scheduler:"),
        ({"training.learning_rate": {"uniform": [0.1, 0.2]}}, "a uniform range; a grid takes"),
    ],
)
def test_a_bad_space_is_refused_before_any_trial(job, tmp_path, capsys, space, expected):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    argv = ["sweep", str(job), "--space", str(path), "--study", str(tmp_path / "sw")]
    if "grid" in expected:
        argv += ["--sampler", "grid"]
    code, out = _cli(argv, capsys)
    assert code == 2 and expected in out.err, out.err
    assert not (tmp_path / "sw" / "trials").exists()


def test_zero_trials_is_refused(job, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("lora.r: {choice: [4, 8]}\n")
    code, out = _cli(["sweep", str(job), "--space", str(path), "--trials", "0"], capsys)
    assert code == 2 and "'--trials': 0 is not in the range x>=1" in out.err


class Faults:
    """A trial whose lora.r is 2 fails; the first trial with lora.r 8 is interrupted (Ctrl-C)."""

    interrupted = False

    @hookimpl
    def on_train_begin(self, run):
        if run.method_settings.r == 2:
            raise JobFailed("the loss became nan at step 1")
        if run.method_settings.r == 8 and not Faults.interrupted:
            Faults.interrupted = True
            raise KeyboardInterrupt


def test_a_sweep_records_failures_survives_ctrl_c_continues_and_sums_up(
    job, tmp_path, capsys, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from tunewright.plugins.experiments.space import parse_space
    from tunewright.plugins.experiments.sweep import run_sweep

    data = read_yaml(job)
    data["trackers"] = ["jsonl", "mlflow", "tensorboard"]
    data["training"]["eval_steps"] = None  # nothing to prune on: every trial runs to the end
    space = parse_space(
        {"lora.r": {"choice": [2, 4, 8]}, "training.learning_rate": {"choice": [1e-3, 5e-3]}},
        "space.yaml",
    )
    study = tmp_path / "sw"
    pm = get_plugin_manager(plugins=[("faults", Faults())])
    messages: list[str] = []
    sweep = lambda trials: run_sweep(
        pm, data, space, source="job.yaml", space_source="space.yaml", trials=trials,
        sampler="grid", metric=None, study_dir=study, echo=messages.append,
    )  # fmt: skip
    done = []
    for _ in range(4):  # Ctrl-C once somewhere among the grid's six points
        try:
            summary = sweep(6)
            break
        except KeyboardInterrupt:
            done.append(messages[-1])
    assert len(done) == 1 and "interrupted; the same command reruns it" in done[0]
    rows = list(csv.DictReader((study / "trials.csv").open()))
    states = [(r["state"], r["param.lora.r"]) for r in rows]
    # seven trials: six grid points, one of them interrupted and rerun
    assert len(rows) == 7 and sum(s == "complete" for s, _ in states) == 4
    failed = {r["reason"] for r in rows if r["state"] == "fail"}
    assert failed == {"interrupted", "JobFailed: the loss became nan at step 1"}
    best = summary["best"]
    assert best["params"]["lora.r"] in (4, 8)
    config = load_config(yaml.safe_load((study / "best.yaml").read_text()), pm.registries)
    assert config.output == str(study / "best") and config.lora.r == best["params"]["lora.r"]
    assert (study / "sweep.png").stat().st_size > 0
    assert json.loads((study / "sweep.json").read_text())["metric"] == "mean_token_accuracy"
    trial = study / "trials" / f"trial-{best['trial']:04d}"
    assert (trial / "eval.json").exists() and (trial / "adapter").is_dir()
    # one MLflow experiment with a run per trial; one TensorBoard folder with a folder per trial
    client = MlflowClient(tracking_uri=f"sqlite:///{(study / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("sw")
    assert len(client.search_runs([experiment.experiment_id])) == 7
    assert len(list((study / "tensorboard").iterdir())) == 7
    # the same command on a finished study only sums up again
    assert sweep(6)["best"] == best

    # runs compare on the sweep folder
    code, out = _cli(
        ["runs", "compare", str(study), "--json", "--plot", str(tmp_path / "c.png")], capsys
    )
    assert code == 0
    comparison = json.loads(out.out)
    assert set(comparison["differing_keys"]) >= {"lora.r", "training.learning_rate"}
    finished = [r for r in comparison["runs"] if r["finished"]]
    assert len(finished) == 4 and all(r["curve"][0][0] == 0 for r in finished)
    assert (tmp_path / "c.png").stat().st_size > 0
    monkeypatch.chdir(tmp_path)  # the default --plot is compare.png in the current directory
    code, out = _cli(["runs", "compare", str(trial), str(study / "trials" / "trial-0000")], capsys)
    assert code == 0 and "mean_token_accuracy final" in out.out.splitlines()[0]
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_the_reporter_reports_training_evaluations_and_prunes():
    from tunewright.plugins.experiments.sweep import Reporter, TrialPruned

    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    first = study.ask()
    Reporter(first, "loss").on_step_end(None, 2, {"eval_loss": 1.0, "eval_stage": "training"})
    study.tell(first, 1.0)
    second = study.ask()
    reporter = Reporter(second, "loss")
    reporter.on_step_end(None, 0, {"eval_loss": 9.0, "eval_stage": "baseline"})  # not reported
    reporter.on_step_end(None, 1, {"loss": 9.0})
    with pytest.raises(TrialPruned, match=r"pruned at step 2 \(loss 3.0000\)"):
        reporter.on_step_end(None, 2, {"eval_loss": 3.0, "eval_stage": "training"})
    assert reporter.reported == {2: 3.0}


def test_the_default_pruner_follows_the_sampler_and_the_budget_follows_the_space(job):
    """auto: Hyperband with TPE (its budget from the first evaluation to the most a trial can
    train), the median rule with random and grid; a federation's budget is in rounds."""
    from tunewright.plugins.experiments.space import parse_space
    from tunewright.plugins.experiments.sweep import STARTUP_TRIALS, make_pruner

    pm = get_plugin_manager()
    data = read_yaml(job)
    data["training"].update(eval_steps=10, max_steps=60)
    config = load_config(data, pm.registries)
    steps = parse_space({"training.max_steps": {"int": [30, 120]}}, "space")
    rank = parse_space({"lora.r": {"choice": [4, 8]}}, "space")

    hyperband = make_pruner("auto", "tpe", config, steps)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource) == (10, 120)
    assert make_pruner("auto", "tpe", config, rank)._max_resource == 60  # the config's own
    for sampler in ("random", "grid"):
        median = make_pruner("auto", sampler, config, steps)
        assert isinstance(median, optuna.pruners.MedianPruner)
        assert median._n_startup_trials == STARTUP_TRIALS
    assert isinstance(make_pruner("none", "tpe", config, steps), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("median", "tpe", config, steps), optuna.pruners.MedianPruner)

    data["training"]["max_steps"] = -1  # epochs decide: Optuna finds the budget itself
    assert make_pruner(
        "hyperband", "tpe", load_config(data, pm.registries), rank
    )._max_resource == ("auto")
    data.update(runner="federated", federated={"rounds": 4, "sites": 2})
    federated = make_pruner("auto", "tpe", load_config(data, pm.registries), rank)
    assert (federated._min_resource, federated._max_resource) == (1, 4)
