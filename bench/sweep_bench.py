"""A TPE sweep on the quickstart job, with and without pruning, against the README default.

    python bench/sweep_bench.py --json sweep-bench.json             # 12 trials x 2 sweeps + the default
    python bench/sweep_bench.py --quick --model DIR --json out.json  # a smoke run on a tiny model
    python bench/sweep_bench.py --replay WORKDIR/sweep-unpruned --workdir W  # no training

Three things run in this one process, one after another, on the quickstart's data (the
chatterbot-corpus conversations, ``tunewright.quickstart``):

1. the README default: the quickstart config as ``tunewright quickstart`` trains it;
2. a TPE sweep (seed 0) over ``training.learning_rate`` (log-uniform 1e-5..1e-3), ``lora.r``
   (4, 8, 16, 32) and ``training.max_steps`` without pruning (``NopPruner``), minimizing the
   held-out loss (evaluated every ``--eval-steps``);
3. the same sweep with the pruner a user gets (``--pruner auto``: ``HyperbandPruner`` with TPE):
   same sampler, seed and space.

``--replay`` trains nothing: it replays the median and Hyperband pruners on the trials of a
finished unpruned sweep (step 2's folder), to compare pruners without a sweep each.

Reported: each side's wall time, the best held-out loss of each sweep against the default's, and
the optimizer steps trained by every trial of each sweep (a pruned trial counts the steps up to
its last evaluation): ``pruning_saves`` is 1 - pruned sweep's steps / unpruned sweep's steps
(issue 21's target: at least 0.30, with the pruned sweep's best still beating the default).
TPE proposes from the trials it has seen, and a pruned trial is seen at its last figure, so the
two sweeps' trials part ways after the first prune: compare their best values and total steps,
not trial by trial.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"


def space(max_steps: tuple[int, int]) -> dict[str, Any]:
    return {
        "training.learning_rate": {"log_uniform": [1.0e-5, 1.0e-3]},
        "lora.r": {"choice": [4, 8, 16, 32]},
        "training.max_steps": {"int": list(max_steps)},
    }


def base_config(workdir: Path, args: argparse.Namespace) -> dict:
    from tunewright.quickstart import quickstart_config, write_dataset

    data = write_dataset(workdir / "data")
    if args.examples:
        lines = data.read_text(encoding="utf-8").splitlines()[: args.examples]
        data.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    config = quickstart_config(workdir, args.default_steps)
    config["model"] = args.model
    config["training"]["eval_steps"] = args.eval_steps
    config["training"].pop("save_steps", None)
    config["training"]["num_threads"] = args.threads
    if args.max_length:
        config["data"]["max_length"] = args.max_length
    if args.batch_size:
        config["training"]["batch_size"] = args.batch_size
    config["output"] = str(workdir / "default")
    return config


def trained_steps(summary: dict) -> int:
    return sum(int(row["steps"] or 0) for row in summary["trials"])


def run_default(pm: Any, config: dict) -> dict:
    from tunewright import load_config, run_job

    started = time.monotonic()
    run_job(load_config(config, pm.registries), pm, overwrite=True, echo=lambda m: None)
    results = json.loads((Path(config["output"]) / "eval.json").read_text())
    return {
        "seconds": round(time.monotonic() - started, 1),
        "loss": results["final"]["loss"],
        "baseline_loss": results["baseline"]["loss"],
        "steps": results["train"]["global_step"],
    }


def run_side(pm: Any, config: dict, args: argparse.Namespace, study: Path, pruner: str) -> dict:
    from tunewright.plugins.experiments.space import parse_space
    from tunewright.plugins.experiments.sweep import run_sweep

    dimensions = parse_space(space(tuple(args.max_steps)), "bench space")
    started = time.monotonic()
    summary = run_sweep(
        pm,
        config,
        dimensions,
        source="bench config",
        space_source="bench space",
        trials=args.trials,
        sampler="tpe",
        metric="loss",
        study_dir=study,
        echo=print if args.verbose else (lambda m: None),
        pruner=pruner,
    )
    states = [row["state"] for row in summary["trials"]]
    return {
        "seconds": round(time.monotonic() - started, 1),
        "best_loss": summary["best"]["value"] if summary["best"] else None,
        "best_params": summary["best"]["params"] if summary["best"] else None,
        "trials": len(states),
        "pruned": states.count("pruned"),
        "failed": states.count("fail"),
        "steps": trained_steps(summary),
    }


def replay(unpruned: Path, config: Any, dimensions: list, pruners: list[str]) -> dict:
    """Each pruner's decisions on a finished unpruned study's trials, as if it had run them: the
    same parameters in the same order, each trial's held-out figures reported step by step until
    the pruner stops it. Only the pruning is replayed: a real pruned sweep's TPE may propose other
    parameters once a trial has been stopped (with Hyperband, from its bracket's trials alone)."""
    import optuna

    from tunewright.plugins.experiments.sweep import STUDY_NAME, make_pruner, storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(unpruned))
    trials = [t for t in source.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    full = sum(int(t.params["training.max_steps"]) for t in trials)
    figures: dict[str, Any] = {"study": str(unpruned), "trials": len(trials), "steps": full}
    for name in pruners:
        study = optuna.create_study(
            study_name=STUDY_NAME, pruner=make_pruner(name, "tpe", config, dimensions)
        )
        steps, best, stopped = 0, None, []
        for t in trials:
            study.enqueue_trial(t.params)
            trial = study.ask(t.distributions)
            at = None
            for step in sorted(t.intermediate_values):
                trial.report(t.intermediate_values[step], step)
                if trial.should_prune():
                    at = step
                    break
            if at is None:
                steps += int(t.params["training.max_steps"])
                best = t.value if best is None else min(best, t.value)
                study.tell(trial, t.value)
            else:
                steps += at
                stopped.append([t.number, at])
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        figures[name] = {
            "steps": steps,
            "saves": round(1 - steps / full, 3) if full else None,
            "best_loss": best,
            "stopped": stopped,
        }
    return figures


def run_sweeps(pm: Any, config: dict, args: argparse.Namespace, workdir: Path) -> dict:
    """The default and both sweeps (those of ``--sides``), and the figures comparing them."""
    figures: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json_path", "verbose")},
        "space": space(tuple(args.max_steps)),
    }
    sides = args.sides.split(",")
    if "default" in sides:
        figures["default"] = run_default(pm, config)
    for name, pruner in (("unpruned", "none"), ("pruned", "auto")):
        if name not in sides:
            continue
        study = workdir / f"sweep-{name}"
        if study.exists():
            raise SystemExit(
                f"{study} exists: give another --workdir (a study continues, not restarts)"
            )
        figures[name] = run_side(pm, config, args, study, pruner)
    if "unpruned" in figures and "pruned" in figures:
        unpruned, pruned = figures["unpruned"]["steps"], figures["pruned"]["steps"]
        figures["pruning_saves"] = round(1 - pruned / unpruned, 3) if unpruned else None
    if "pruned" in figures and "default" in figures:
        best = figures["pruned"]["best_loss"]
        figures["beats_default"] = best is not None and best < figures["default"]["loss"]
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument(
        "--max-steps", type=int, nargs=2, default=[30, 120], metavar=("LOW", "HIGH")
    )
    parser.add_argument("--default-steps", type=int, default=60, help="the quickstart's steps")
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--examples", type=int, default=0, help="keep the first N (0: all)")
    parser.add_argument("--max-length", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--workdir", default="bench-sweep")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--quick", action="store_true", help="3 trials of 2-6 steps, 60 examples")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--sides",
        default="default,unpruned,pruned",
        help="which of the three to run (comma-separated); the savings need both sweeps",
    )
    parser.add_argument(
        "--replay",
        metavar="STUDY",
        help="no training: replay each pruner on the trials of a finished unpruned sweep folder "
        "(e.g. WORKDIR/sweep-unpruned)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.max_steps, args.default_steps, args.eval_steps = 3, [2, 6], 4, 2
        args.examples, args.max_length, args.batch_size = args.examples or 60, 128, 4
    from tunewright import get_plugin_manager

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pm = get_plugin_manager()
    config = base_config(workdir, args)
    if args.replay:
        from tunewright import load_config
        from tunewright.plugins.experiments.space import parse_space

        figures = replay(
            Path(args.replay),
            load_config(config, pm.registries),
            parse_space(space(tuple(args.max_steps)), "bench space"),
            ["median", "hyperband"],
        )
    else:
        figures = run_sweeps(pm, config, args, workdir)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return figures


if __name__ == "__main__":
    main()
