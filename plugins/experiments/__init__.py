"""Experiments: hyperparameter sweeps on Optuna (``tunewright sweep``), the ``tensorboard`` and
``mlflow`` trackers, and ``tunewright runs compare``.

Optuna, TensorBoard and MLflow come with ``pip install tunewright[experiments]``; this plugin
imports none of them until a command or a tracker needs it, and a config that names a tracker
whose package is missing is refused by the config check (exit 2) before anything loads."""

from tunewright import hookimpl

from .trackers import MlflowSettings, MlflowTracker, TensorboardSettings, TensorboardTracker


@hookimpl
def register_trackers(register):
    register("tensorboard", TensorboardTracker)
    register("mlflow", MlflowTracker)


@hookimpl
def register_config_sections(register):
    register("tensorboard", TensorboardSettings)
    register("mlflow", MlflowSettings)


@hookimpl
def register_commands(cli):
    from .commands import runs, sweep

    cli.add_command(sweep)
    cli.add_command(runs)


@hookimpl
def on_train_end(run, result):
    """The MLflow run gets the run's files once they are written (after its tracker closed)."""
    for tracker in run.trackers:
        if isinstance(tracker, MlflowTracker):
            tracker.log_run_files()


@hookimpl
def on_export(run_dir, bundle):
    """A run tracked with mlflow gets its exported bundle's manifest (``bundle/manifest.json``)
    as an artifact of the same MLflow run, as ``tunewright runs log-bundle`` logs it by hand."""
    from pathlib import Path

    if not (Path(run_dir) / "mlflow.json").is_file():
        return None
    from .trackers import log_bundle

    run_id = log_bundle(Path(run_dir), Path(bundle))
    return f"manifest.json logged to MLflow run {run_id}"
