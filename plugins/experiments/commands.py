"""The ``sweep`` command and the ``runs`` group (``runs compare``, ``runs log-bundle``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tunewright import UsageError, apply_overrides, read_yaml


def _echo(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option(
    "--space",
    "space_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML of config keys and distributions, e.g. lora.r: {choice: [4, 8, 16]}.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Finished trials to reach, counting those of an earlier run of the study "
    "[default: 12; grid: every point].",
)
@click.option(
    "--sampler", type=click.Choice(["tpe", "random", "grid"]), default="tpe", show_default=True
)
@click.option(
    "--pruner",
    type=click.Choice(["auto", "hyperband", "median", "none"]),
    default="auto",
    show_default=True,
    help="Stop hopeless trials at an evaluation: Optuna's HyperbandPruner or MedianPruner, or "
    "never; auto: Hyperband with tpe, median with random and grid.",
)
@click.option(
    "--metric", default=None, help="The held-out metric to optimize [default: the task's]."
)
@click.option(
    "--study",
    "study_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The sweep's folder; the same folder continues the study [default: <output>-sweep].",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key for every trial (repeatable).",
)
@click.pass_obj
def sweep(
    pm, config_path, space_path, trials, sampler, pruner, metric, study_dir, overrides
) -> None:
    """Search hyperparameters of CONFIG over SPACE with Optuna; each trial is a run."""
    from .space import read_space
    from .sweep import run_sweep

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UsageError(
            "tunewright sweep needs optuna, which is not installed (pip install 'tunewright[experiments]')"
        ) from None
    data = apply_overrides(read_yaml(config_path), list(overrides))
    dimensions = read_space(space_path)
    run_sweep(
        pm,
        data,
        dimensions,
        source=config_path,
        space_source=space_path,
        trials=trials,
        sampler=sampler,
        metric=metric,
        study_dir=Path(study_dir) if study_dir else None,
        echo=_echo,
        pruner=pruner,
    )


@click.group()
def runs() -> None:
    """Look at finished runs side by side."""


@runs.command()
@click.argument("run_dirs", metavar="RUN...", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default="compare.png",
    show_default=True,
    help="Where to draw the validation curves.",
)
@click.pass_obj
def compare(pm, run_dirs, as_json, plot_path) -> None:
    """Compare runs (or every trial of a sweep folder): the config keys that differ, the
    baseline and final metrics, and the validation curves in one image."""
    from .compare import compare_runs, format_comparison, plot_curves

    comparison = compare_runs([Path(p) for p in run_dirs])
    plot_curves(comparison, Path(plot_path))
    if as_json:
        click.echo(json.dumps(comparison, indent=2, default=str))
    else:
        click.echo(format_comparison(comparison))
        _echo(f"validation curves: {plot_path}")


@runs.command(name="log-bundle")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.argument("bundle", metavar="BUNDLE", type=click.Path(file_okay=False))
@click.pass_obj
def log_bundle_command(pm, run_dir, bundle) -> None:
    """Log an exported BUNDLE's manifest.json to the MLflow run of RUN."""
    from .trackers import log_bundle

    try:
        run_id = log_bundle(Path(run_dir), Path(bundle))
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    _echo(f"{bundle}/manifest.json logged to MLflow run {run_id}")
