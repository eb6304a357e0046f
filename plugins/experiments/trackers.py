"""The ``tensorboard`` and ``mlflow`` trackers.

Both follow the tracker contract (:class:`tunewright.types.TrackerFactory`): made once per job on
the main process, before the baseline; on ``--resume`` they continue what they recorded and never
truncate it.

- ``tensorboard`` writes event files under ``<run>/tensorboard`` (or ``tensorboard.logdir``):
  ``train/<figure>`` per logged step, ``eval/<metric>`` per evaluation (the validation curve) and
  the config as hyperparameters (the HPARAMS tab), all in the one folder a stock
  ``tensorboard --logdir`` reads. A resumed run opens a new event file with ``purge_step`` set
  past ``start_step``, so TensorBoard hides the earlier file's steps that are trained again.
- ``mlflow`` logs to ``sqlite:///<run>/mlflow.db`` (artifacts beside it in ``<run>/mlartifacts``)
  unless ``mlflow.tracking_uri`` names another store: the config as params, every figure per
  step, tags for task, method, model and runner, and when the job ends the adapter,
  ``report.png`` and ``eval.json`` as artifacts. The MLflow run's id is kept in
  ``<run>/mlflow.json``: a resumed run logs to the same MLflow run (steps trained again are
  logged again beside the first ones; MLflow keeps both).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from tunewright import Run, Section


def _missing(package: str, tracker: str) -> list[str]:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        return [
            f"trackers: {tracker} needs the {package} package, which is not installed "
            "(pip install 'tunewright[experiments]')"
        ]
    return []


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"training": {"learning_rate": 1e-4}}`` -> ``{"training.learning_rate": 1e-4}``."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


# ---------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------


class TensorboardSettings(Section):
    """The ``tensorboard:`` section (optional)."""

    logdir: str | None = Field(
        None, description="the folder of the event files (default: <output>/tensorboard)"
    )


class TensorboardTracker:
    """Scalars per step, the validation curve and the config as hyperparameters."""

    def __init__(self, run: Run):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        settings = run.config.section("tensorboard")
        logdir = settings.logdir if settings and settings.logdir else None
        self.logdir = Path(logdir) if logdir else Path(run.run_dir) / "tensorboard"
        self.logdir.mkdir(parents=True, exist_ok=True)
        resumed = run.resume_from is not None
        self.writer = SummaryWriter(
            str(self.logdir), purge_step=run.start_step + 1 if resumed else None
        )
        if not resumed:
            # written into the run's own folder (add_hparams() would start a folder of its own,
            # which an event reader on the run's folder does not see)
            metric, _ = run.primary_metric
            values = {
                k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in flatten(run.config.to_dict()).items()
                if v is not None
            }
            file_writer = self.writer._get_file_writer()
            for summary in hparams(values, {f"eval/{metric}": 0.0}):
                file_writer.add_summary(summary)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in _numbers(metrics).items():
            tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    @staticmethod
    def check(config: Any) -> list[str]:
        return _missing("tensorboard", "tensorboard")


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------


class MlflowSettings(Section):
    """The ``mlflow:`` section (optional)."""

    tracking_uri: str | None = Field(
        None,
        description="an MLflow tracking URI (default: sqlite:///<output>/mlflow.db, a local store)",
    )
    experiment: str = Field("tunewright", min_length=1, description="the MLflow experiment")
    run_name: str | None = Field(None, description="the MLflow run's name (default: the folder's)")


#: MLflow refuses a parameter value longer than this
PARAM_LIMIT = 6000


class MlflowTracker:
    """Params, metrics per step, tags and (when the job ends) the run's files as artifacts."""

    def __init__(self, run: Run):
        from mlflow.tracking import MlflowClient

        settings = run.config.section("mlflow") or MlflowSettings()
        self.run_dir = Path(run.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        uri = settings.tracking_uri or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        experiment = self.client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = None
            if uri.startswith("sqlite:///"):
                # beside the database, never ./mlruns under whatever the current directory is
                location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(
                settings.experiment, artifact_location=location
            )
        record = self.run_dir / "mlflow.json"
        previous = json.loads(record.read_text()) if record.exists() else {}
        if (
            run.resume_from is not None
            and previous.get("tracking_uri") == uri
            and previous.get("run_id")
        ):
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {
            "task": run.task_name,
            "method": run.method_name,
            "model": run.config.model,
            "runner": run.config.runner,
            "run_dir": str(self.run_dir.resolve()),
        }
        created = self.client.create_run(
            experiment_id, run_name=settings.run_name or self.run_dir.name, tags=tags
        )
        self.run_id = created.info.run_id
        staging = record.with_name(f".{record.name}.tmp")
        staging.write_text(
            json.dumps(
                {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id},
                indent=2,
            )
            + "\n"
        )
        staging.replace(record)
        from mlflow.entities import Param

        params = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in flatten(run.config.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key, value, now, step)
            for key, value in _numbers(metrics).items()
            if not math.isinf(value)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        error = sys.exc_info()[1]  # close() runs in the job's finally: did the job fail?
        if error is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            self.client.set_tag(self.run_id, "failure", f"{type(error).__name__}: {error}"[:5000])
        self.client.set_terminated(self.run_id, status=status)

    def log_run_files(self) -> None:
        """The adapter, ``report.png`` and ``eval.json`` (those that exist) as artifacts."""
        for name in ("eval.json", "report.png", "config.yaml"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if (self.run_dir / "adapter").is_dir():
            self.client.log_artifacts(self.run_id, str(self.run_dir / "adapter"), "adapter")

    @staticmethod
    def check(config: Any) -> list[str]:
        problems = _missing("mlflow", "mlflow")
        settings = config.section("mlflow")
        uri = settings.tracking_uri if settings else None
        if uri is not None and "://" not in uri and not uri.startswith(("databricks", "file:")):
            problems.append(
                f"mlflow.tracking_uri: {uri!r} is not a URI (e.g. sqlite:///runs/mlflow.db, "
                "http://mlflow.example:5000, databricks)"
            )
        return problems


def log_bundle(run_dir: Path, bundle: Path) -> str:
    """Log an exported bundle's ``manifest.json`` to the MLflow run that ``run_dir`` recorded
    (``tunewright runs log-bundle``); returns the MLflow run id."""
    from mlflow.tracking import MlflowClient

    record = run_dir / "mlflow.json"
    if not record.is_file():
        raise FileNotFoundError(f"{run_dir}: no mlflow.json (the run was not tracked with mlflow)")
    info = json.loads(record.read_text())
    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{bundle}: no manifest.json (not an exported bundle)")
    MlflowClient(tracking_uri=info["tracking_uri"]).log_artifact(
        info["run_id"], str(manifest), "bundle"
    )
    return info["run_id"]
