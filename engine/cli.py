"""The ``tunewright`` command line. Exit codes: 0 done, 1 the job failed, 2 bad usage, config or data,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM: a scheduler's preemption, ``kill``).

One plugin manager per invocation: :func:`main` builds it, adds the plugins' commands to a fresh
group and hands it to every command as the click context's object (``@click.pass_obj``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

from .compat import PluginDeprecationWarning
from .config import apply_overrides, load_config, read_yaml
from .errors import TunewrightError, UsageError
from .manager import get_plugin_manager, plugin_summary


def _echo(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tunewright")
def cli() -> None:
    """tunewright: fine-tune pretrained models from one config, with plugins."""


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set training.max_steps=20 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing run directory (only one tunewright made).",
)
@click.pass_obj
def train(pm, config_path: str, overrides: tuple[str, ...], resume: bool, overwrite: bool) -> None:
    """Train the job described by CONFIG."""
    from .run import run_job

    data = apply_overrides(read_yaml(config_path), list(overrides))
    config = load_config(data, pm.registries, source=config_path)
    try:
        result = run_job(config, pm, resume=resume, overwrite=overwrite, echo=_echo)
    except KeyboardInterrupt:
        from .checkpoints import last_checkpoint

        checkpoint = last_checkpoint(Path(config.output))
        if checkpoint is not None:
            _echo(
                f"{checkpoint.name} is kept: tunewright train {config_path} --resume continues from it"
            )
        raise
    from accelerate import PartialState

    if PartialState().is_main_process:  # under torchrun, the process that wrote it
        _echo(f"run written to {result.run_dir}")


@cli.command()
@click.argument("data_path", metavar="DATA", type=click.Path())
@click.option(
    "--task", default=None, help="Task the data is for (default: what the file's format says)."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="A job config: its model's tokenizer, max_length and training settings are used.",
)
@click.option(
    "--model",
    default=None,
    help=(
        "Model whose tokenizer counts tokens (default: the task's packaged model; lengths are checked "
        "against its context)."
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def validate(
    pm, data_path: str, task: str | None, config_path: str | None, model: str | None, as_json: bool
) -> None:
    """Check every example of DATA and summarise it. Exits 2 if any example has an error."""
    from .validate import validate_file

    config = None
    if config_path:
        config = load_config(read_yaml(config_path), pm.registries, source=config_path)
        if task is not None and task != config.task:
            raise UsageError(
                f"--task {task!r} disagrees with the config's task {config.task!r}; pass one of them"
            )
    report = validate_file(Path(data_path), task, pm, config=config, model=model)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.render())
    if report.errors:
        sys.exit(2)


@cli.command(name="eval")
@click.argument("run_dir", metavar="RUN_OR_BUNDLE", type=click.Path(file_okay=False))
@click.option(
    "--data", "data_path", required=True, type=click.Path(), help="Examples to evaluate on."
)
@click.option(
    "--grader",
    "grader_path",
    type=click.Path(dir_okay=False),
    help="A grader config (YAML): grade the model's answers, baseline and tuned side by side.",
)
@click.option(
    "--baseline",
    type=click.Path(file_okay=False),
    help="With --grader: the run or bundle to compare with (default: a run's base model).",
)
@click.option(
    "--max-new-tokens", default=64, show_default=True, help="With --grader: answer length bound."
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_obj
def eval_command(
    pm,
    run_dir: str,
    data_path: str,
    grader_path: str | None,
    baseline: str | None,
    max_new_tokens: int,
    as_json: bool,
) -> None:
    """Evaluate a tuned run on a data file, or grade a run's or a bundle's answers (--grader)."""
    from .validate import evaluate_run

    if grader_path is not None:
        from .grading import grade_path, render

        graded = grade_path(
            run_dir, data_path, grader_path, pm, baseline=baseline, max_new_tokens=max_new_tokens
        )
        click.echo(json.dumps(graded, indent=2) if as_json else "\n".join(render(graded)))
        return
    if baseline is not None:
        raise UsageError("--baseline goes with --grader")

    metrics = evaluate_run(Path(run_dir), Path(data_path), pm)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            click.echo(
                f"{key:>22}  {value:.4f}" if isinstance(value, float) else f"{key:>22}  {value}"
            )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def plugins(pm, as_json: bool) -> None:
    """List every plugin: distribution, hooks and what it registered."""
    summary = plugin_summary(pm)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for plugin in summary:
        if plugin.get("unavailable"):
            click.echo(f"{plugin['name']}  (built-in, unavailable: {plugin['unavailable']})")
            continue
        origin = (
            f"{plugin['distribution']} {plugin['version']}" if plugin["distribution"] else "local"
        )
        click.echo(f"{plugin['name']}  ({origin}{', built-in' if plugin['builtin'] else ''})")
        click.echo(f"    hooks: {', '.join(plugin['hooks'])}")
        for kind, names in plugin["registered"].items():
            click.echo(f"    {kind.replace('_', ' ')}: {', '.join(names)}")


@cli.command()
@click.argument("path", default="tunewright.yaml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: str, force: bool) -> None:
    """Write a commented starter config to PATH."""
    from importlib.resources import files

    target = Path(path)
    if target.exists() and not force:
        raise UsageError(f"{target} exists already (pass --force to overwrite it)")
    target.write_text(
        files("tunewright").joinpath("templates/config.yaml").read_text(encoding="utf-8")
    )
    _echo(f"wrote {target}; edit it, then: tunewright train {target}")


@cli.command()
@click.option(
    "--workdir",
    default="tunewright-quickstart",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the data, the run and the bundle go.",
)
@click.option("--max-steps", default=60, show_default=True, help="Optimizer steps.")
@click.pass_obj
def quickstart(pm, workdir: str, max_steps: int) -> None:
    """Tune SmolLM2-135M-Instruct with LoRA on chatterbot-corpus, offline, and compare."""
    from .quickstart import run_quickstart

    run_quickstart(Path(workdir), max_steps=max_steps, echo=_echo, pm=pm)


def build_cli(pm=None) -> click.Group:
    """The core commands plus those the plugins add (``register_commands``), in a fresh group."""
    pm = pm or get_plugin_manager()
    group = click.Group(
        "tunewright",
        commands=dict(cli.commands),
        help=cli.help,
        params=list(cli.params),
        context_settings=cli.context_settings,
    )
    pm.hook.register_commands(cli=group)
    return group


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that it unwinds as on Ctrl-C: ``finally`` blocks
    stop the processes a command started (Flower's SuperLink, a site's SuperNode), checkpoints
    already written stay, and nothing half-written is left (Python's default for SIGTERM ends the
    process at once, leaving every child running)."""


def _terminate(signum: int, frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    # signal handlers belong to the main thread; main() called from another keeps the default
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    # Python hides a DeprecationWarning raised outside __main__: a plugin's author must see it
    warnings.filterwarnings("default", category=PluginDeprecationWarning)
    try:
        pm = get_plugin_manager()
        group = build_cli(pm)
        group.main(args=argv, prog_name="tunewright", standalone_mode=False, obj=pm)
    except click.exceptions.Abort as exc:
        if not isinstance(
            exc.__cause__, KeyboardInterrupt
        ):  # click wraps Ctrl-C (and SIGTERM) in Abort
            _echo("aborted")
            sys.exit(1)
        _interrupted(exc.__cause__, owns_process=argv is None)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TunewrightError as exc:
        _echo(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc, owns_process=argv is None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(0)


#: how long an interrupted command's exit waits for threads a library left running
EXIT_GRACE_SECONDS = 15.0


def _interrupted(exc: KeyboardInterrupt, owns_process: bool) -> None:
    terminated = isinstance(exc, Terminated)
    code = 143 if terminated else 130
    _echo("terminated" if terminated else "interrupted")
    if owns_process:
        # Python's exit joins every non-daemon thread; one a library left waiting forever (Flower's
        # simulation threads on results of Ray workers that are gone) would hold the process: a
        # grace period later it ends with its code anyway (not when main() is embedded: a caller
        # that passes argv and catches SystemExit lives on)
        watchdog = threading.Timer(EXIT_GRACE_SECONDS, _exit_now, args=(code,))
        watchdog.daemon = True
        watchdog.start()
    sys.exit(code)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
