"""``tunewright sweep``: a hyperparameter search on Optuna, each trial an ordinary run.

::

    SWEEP/                    (--study; default: <output>-sweep)
      study.db                Optuna's SQLite storage: the same command continues the study
      trials/trial-0000/      one run directory per trial (config.yaml, eval.json, metrics.jsonl...)
      trials.csv, sweep.json  every trial: state, value, parameters, the reason a trial failed
      sweep.png               the metric against each parameter, and the best value over trials
      best.yaml               the best trial's config, runnable with tunewright train

**Pruning.** Each trial reports its held-out metric at every ``training.eval_steps`` evaluation
(every round of a federation) to an Optuna pruner, which may stop it there. ``--pruner auto`` (the
default) follows Optuna's own benchmarks of sampler and pruner pairs: ``HyperbandPruner`` with the
TPE sampler, ``MedianPruner`` with the random and grid samplers.

- ``hyperband``: successive halving in brackets of different aggressiveness (reduction factor 3),
  its budget in the steps trials report at: from the first evaluation (``training.eval_steps``;
  the first round of a federation) to the most a trial can train (the upper end of
  ``training.max_steps`` or ``federated.rounds`` in the space, else the config's value; else
  Optuna's ``auto``: the first finished trial's). Optuna's TPE samples each bracket's trials from
  that bracket's history. On the bench's 12-trial quickstart sweep (``bench/sweep_bench.py``) it
  stopped 6 trials and kept the best, where the median rule stopped 3: 39.7% of the trial steps
  saved against 18.7%.
- ``median``: a trial whose figure at a step is worse than the median of the earlier trials'
  figures at that step stops there; nothing is pruned before ``n_startup_trials`` (3) trials have
  finished, so a sweep of a few trials (a grid of 2) behaves as without pruning.
- ``none``: every trial trains to its end.

The baseline (step 0, the same for every trial) is not reported.

**Failure.** A trial that raises (a NaN loss, out of memory, a bad value) is recorded as failed
with its reason and the sweep goes on. Ctrl-C ends the running trial (its run directory is left
as it stands), marks it failed as ``interrupted`` and queues its parameters again: the same
command reruns it first and then continues to ``--trials`` finished trials.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tunewright import ConfigError, hookimpl, load_config, metric_direction, run_job

from .space import Dimension, check_space, set_key

STUDY_NAME = "sweep"
#: finished trials a MedianPruner waits for before it prunes
STARTUP_TRIALS = 3
#: ``--pruner`` values; ``auto``: the pruner Optuna's benchmarks pair with the sampler
PRUNERS = ("auto", "hyperband", "median", "none")
#: Hyperband's reduction factor (Optuna's default): each rung keeps a third of its trials
REDUCTION_FACTOR = 3


class TrialPruned(Exception):
    """Raised by the reporter when Optuna's pruner stops a trial (becomes optuna.TrialPruned)."""


class Reporter:
    """A plugin registered for one trial: reports ``eval_<metric>`` at every training-time
    evaluation to the Optuna trial and stops the trial when the pruner says so."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric
        self.reported: dict[int, float] = {}
        #: set when the pruner stopped the trial: a runner that wraps the exception (a simulated
        #: federation's server runs in Flower's thread) still ends a pruned trial, not a failed one
        self.pruned: TrialPruned | None = None

    @hookimpl
    def on_step_end(self, run, step, logs):
        value = logs.get(f"eval_{self.metric}")
        if logs.get("eval_stage") != "training" or value is None or step in self.reported:
            return
        self.reported[step] = float(value)
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned = TrialPruned(f"pruned at step {step} ({self.metric} {float(value):.4f})")
            raise self.pruned


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def make_sampler(name: str, dimensions: list[Dimension], seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    grid: dict[str, list[Any]] = {}
    for d in dimensions:
        if d.kind == "choice":
            grid[d.key] = d.values
        elif d.kind == "int" and d.values[1] - d.values[0] < 1000:
            grid[d.key] = list(range(d.values[0], d.values[1] + 1))
        else:
            raise ConfigError(
                f"--sampler grid: {d.key} is a {d.kind} range; a grid takes choice (or int) only"
            )
    return optuna.samplers.GridSampler(grid, seed=seed)


def budget(config: Any, dimensions: list[Dimension]) -> tuple[int, int | str]:
    """Hyperband's smallest and largest budget, in the steps trials report at: the first
    evaluation, and the most a trial can train (the space's upper end of the steps key, else the
    config's value, else ``"auto"``)."""
    if config.runner == "federated":  # a federation reports every round
        key, first = "federated.rounds", 1
        section = config.section("federated")
        most: Any = None if section is None else section.rounds
    else:
        key, first = "training.max_steps", config.training.eval_steps or 1
        most = config.training.max_steps
    for d in dimensions:
        if d.key == key:
            most = max(d.values) if d.kind == "choice" else d.values[1]
    if not isinstance(most, int) or most <= first:
        return first, "auto"
    return first, most


def make_pruner(name: str, sampler: str, config: Any, dimensions: list[Dimension]) -> Any:
    """The Optuna pruner for ``--pruner`` (see the module's docstring)."""
    import optuna

    if name == "auto":
        name = "hyperband" if sampler == "tpe" else "median"
    if name == "hyperband":
        first, most = budget(config, dimensions)
        return optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=most, reduction_factor=REDUCTION_FACTOR
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=0)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: unknown pruner {name!r} (allowed: {', '.join(PRUNERS)})")


def grid_size(dimensions: list[Dimension]) -> int:
    size = 1
    for d in dimensions:
        size *= len(d.values) if d.kind == "choice" else d.values[1] - d.values[0] + 1
    return size


def trial_data(
    data: dict, params: dict[str, Any], folder: Path, study_dir: Path, trackers: list[str]
) -> dict:
    """The trial's config mapping: the sweep's config with the trial's values, its own output,
    and its trackers pointed at the sweep's shared MLflow experiment and TensorBoard folder."""
    data = copy.deepcopy(data)
    for key, value in params.items():
        data = set_key(data, key, value)
    data["output"] = str(folder)
    if "mlflow" in trackers:
        section = dict(data.get("mlflow") or {})
        section.setdefault("tracking_uri", storage_url(study_dir).replace("study.db", "mlflow.db"))
        section.setdefault("experiment", study_dir.name)
        section["run_name"] = folder.name
        data["mlflow"] = section
    if "tensorboard" in trackers:
        section = dict(data.get("tensorboard") or {})
        base = Path(section["logdir"]) if section.get("logdir") else study_dir / "tensorboard"
        section["logdir"] = str(base / folder.name)
        data["tensorboard"] = section
    return data


def finished_count(study: Any) -> int:
    """Trials that count toward ``--trials``: complete, pruned or failed, less those interrupted
    (each interrupted trial has a queued rerun carrying ``retry_of``)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in done for t in trials)
    return finished - sum("retry_of" in t.user_attrs for t in trials)


def requeue_stale(study: Any, echo: Callable[[str], None]) -> None:
    """A trial left running by a process that was killed outright: failed, and queued again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        echo(f"trial {t.number} was left running by an earlier sweep: queued again")


def run_sweep(
    pm: Any,
    data: dict,
    dimensions: list[Dimension],
    *,
    source: str,
    space_source: str,
    trials: int | None,
    sampler: str,
    metric: str | None,
    study_dir: Path | None,
    echo: Callable[[str], None],
    pruner: str = "auto",
) -> dict:
    """Run (or continue) the study until ``trials`` trials have finished; write the summary.
    ``pruner``: one of :data:`PRUNERS` (see the module's docstring)."""
    import optuna

    registries = pm.registries
    config = load_config(data, registries, source=source)
    check_space(dimensions, data, registries, space_source)
    task = registries.get("tasks", config.task, key="task")
    if metric is None:
        metric = task.primary_metric
    direction = metric_direction(task, metric, task_name=config.task, key="--metric")
    if sampler == "grid":
        size = grid_size(dimensions)
        trials = size if trials is None else min(trials, size)
    trials = 12 if trials is None else trials
    study_dir = Path(study_dir or f"{config.output}-sweep")
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage_url(study_dir),
        load_if_exists=True,
        direction="maximize" if direction == "max" else "minimize",
        sampler=make_sampler(sampler, dimensions, config.seed),
        pruner=make_pruner(pruner, sampler, config, dimensions),
    )
    settings = {"metric": metric, "direction": direction, "space": [d.key for d in dimensions]}
    stored = study.user_attrs.get("settings")
    if stored is not None and stored != settings:
        raise ConfigError(
            f"--study {study_dir}: this study was started with {stored}, not {settings}; "
            "give another --study folder for a different sweep"
        )
    study.set_user_attr("settings", settings)
    requeue_stale(study, echo)
    if config.training.eval_steps is None and config.runner == "local":
        echo(
            "training.eval_steps is not set: trials report only their final figure, none is pruned"
        )
    done = finished_count(study)
    if done:
        echo(f"continuing the study in {study_dir}: {done} of {trials} trials finished")

    def objective(trial: Any) -> float:
        params = {d.key: d.suggest(trial) for d in dimensions}
        folder = study_dir / "trials" / f"trial-{trial.number:04d}"
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        echo(f"trial {trial.number}: {shown}")
        trial.set_user_attr("run_dir", str(folder))
        name = f"sweep-trial-{trial.number}"
        reporter = Reporter(trial, metric)
        try:
            trial_config = load_config(
                trial_data(data, params, folder, study_dir, config.trackers),
                registries,
                source=f"trial {trial.number}",
            )
            pm.register(reporter, name=name)
            try:
                run_job(trial_config, pm, overwrite=True, echo=lambda m: echo(f"  {m}"))
            except Exception:
                if reporter.pruned is not None:
                    raise reporter.pruned from None
                raise
            finally:
                pm.unregister(name=name)
            value = _final(folder, metric)
        except TrialPruned as exc:
            trial.set_user_attr("reason", str(exc))
            echo(f"trial {trial.number}: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        except KeyboardInterrupt:
            # Optuna records the trial as failed and lets the interrupt through
            trial.set_user_attr("reason", "interrupted")
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            echo(
                f"trial {trial.number} interrupted; the same command reruns it and continues "
                f"the study ({finished_count(study)} of {trials} trials finished)"
            )
            raise
        except Exception as exc:  # a failed trial is recorded and the sweep goes on
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("reason", reason[:2000])
            echo(f"trial {trial.number} failed: {reason}")
            raise
        echo(f"trial {trial.number}: {metric} {value:.4f}")
        return value

    while finished_count(study) < trials:
        study.optimize(objective, n_trials=1, catch=(Exception,))
    return summarize(study, study_dir, dimensions, metric, direction, echo)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _final(folder: Path, metric: str) -> float:
    results = json.loads((folder / "eval.json").read_text())
    value = results.get("final", {}).get(metric)
    if value is None:
        raise ValueError(f"{folder}/eval.json has no final {metric} (no held-out data?)")
    if not math.isfinite(float(value)):
        raise ValueError(f"the final {metric} is {value}")
    return float(value)


def write_atomic(path: Path, text: str) -> None:
    """Written under a temporary name and renamed: never a half-written file that looks whole."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)


def trial_rows(study: Any) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        trained = steps[-1] if steps else None
        run_dir = Path(t.user_attrs.get("run_dir", ""))
        if t.state.name == "COMPLETE" and (run_dir / "eval.json").is_file():
            trained = json.loads((run_dir / "eval.json").read_text())["train"]["global_step"]
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "steps": trained,
                **{f"param.{k}": v for k, v in t.params.items()},
                "reason": t.user_attrs.get("reason", ""),
                "run_dir": t.user_attrs.get("run_dir", ""),
            }
        )
    return rows


def summarize(
    study: Any,
    study_dir: Path,
    dimensions: list[Dimension],
    metric: str,
    direction: str,
    echo: Callable[[str], None],
) -> dict:
    """Write trials.csv, sweep.json, sweep.png and best.yaml; print the table."""
    from optuna.trial import TrialState

    rows = trial_rows(study)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(study_dir / "trials.csv", table.getvalue())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        best = study.best_trial
        config = yaml.safe_load((Path(best.user_attrs["run_dir"]) / "config.yaml").read_text())
        config["output"] = str(study_dir / "best")
        header = (
            f"# the best trial of {study_dir} (trial {best.number}): {metric} {best.value:.4f}\n"
            f"# tunewright train {study_dir / 'best.yaml'}\n"
        )
        write_atomic(study_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    summary = {
        "metric": metric,
        "direction": direction,
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs["run_dir"],
            "config": str(study_dir / "best.yaml"),
        },
        "trials": rows,
    }
    write_atomic(study_dir / "sweep.json", json.dumps(summary, indent=2, default=str) + "\n")
    plot_sweep(rows, dimensions, metric, direction, study_dir / "sweep.png")
    echo(format_table(rows, [f"param.{d.key}" for d in dimensions], metric))
    if best is None:
        echo(f"no trial finished; see {study_dir / 'trials.csv'}")
    else:
        echo(
            f"best: trial {best.number}, {metric} {best.value:.4f} "
            f"({', '.join(f'{k}={_short(v)}' for k, v in best.params.items())}); "
            f"its config: {study_dir / 'best.yaml'}"
        )
    return summary


def format_table(rows: list[dict], params: list[str], metric: str) -> str:
    header = ["trial", "state", metric, *[p[6:] for p in params], "reason"]
    lines = [header]
    for row in rows:
        value = row["value"]
        lines.append(
            [
                str(row["trial"]),
                row["state"],
                "" if value is None else f"{value:.4f}",
                *[_short(row.get(p, "")) for p in params],
                (row["reason"] or "")[:60],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
    )


def plot_sweep(
    rows: list[dict], dimensions: list[Dimension], metric: str, direction: str, path: Path
) -> Path:
    """The metric against each parameter (finished trials; a pruned one at its last reported
    figure, hollow), and the best value over trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(dimensions) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.4), squeeze=False)
    for ax, d in zip(axes[0], dimensions):
        key = f"param.{d.key}"
        for state, style in (("complete", "o"), ("pruned", "x")):
            points = [
                (r[key], r["value"])
                for r in rows
                if r["state"] == state and r["value"] is not None and key in r
            ]
            if not points:
                continue
            xs, ys = zip(*points)
            if d.kind == "choice":
                labels = [str(v) for v in d.values]
                xs = tuple(labels.index(str(x)) for x in xs)
                ax.set_xticks(range(len(labels)), labels)
            ax.scatter(xs, ys, marker=style, label=state)
        if d.log:
            ax.set_xscale("log")
        ax.set_xlabel(d.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    best, curve = None, []
    for r in rows:
        if r["state"] == "complete" and r["value"] is not None:
            better = max if direction == "max" else min
            best = r["value"] if best is None else better(best, r["value"])
        curve.append((r["trial"], best))
    points = [(t, b) for t, b in curve if b is not None]
    if points:
        ax.step(*zip(*points), where="post", label="best so far")
        done = [(r["trial"], r["value"]) for r in rows if r["state"] == "complete"]
        ax.scatter(*zip(*done), s=12, alpha=0.6, label="trial")
        ax.legend(fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    staging = path.with_name(f".{path.name}.tmp.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.savefig(staging, dpi=100)
    plt.close(fig)
    staging.replace(path)
    return path
