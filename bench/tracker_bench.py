"""What the tensorboard and mlflow trackers cost per training step, beside ``jsonl`` alone.

    python bench/tracker_bench.py --json tracker-bench.json            # the quickstart job, 3 rounds
    python bench/tracker_bench.py --quick --model DIR --json out.json   # a smoke run on a tiny model

Two measures, because on a busy machine the first is noisier than the overhead it looks for:

1. **Step time.** The quickstart job (``logging_steps`` 1, the worst case: every step is logged)
   trains with ``trackers: [jsonl]``, ``[jsonl, tensorboard]``, ``[jsonl, mlflow]`` and all three,
   in rounds that alternate the order; each side's step time is its ``train_seconds / steps``
   (``TrainResult``), the median over rounds; ``overhead`` is against ``[jsonl]`` of the same round.
2. **Direct cost.** The time of every ``log()`` call of each tracker, taken around the call
   during the same runs, summed and divided by the run's steps: the tracker's own milliseconds
   per step, as a share of the ``[jsonl]`` step time (issue 21's target: at most 3%).
   Creating and closing a tracker (MLflow's database, the artifacts) happens outside the
   training loop and is reported apart (``setup_seconds``, ``close_seconds``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
SIDES = {
    "jsonl": ["jsonl"],
    "tensorboard": ["jsonl", "tensorboard"],
    "mlflow": ["jsonl", "mlflow"],
    "all": ["jsonl", "tensorboard", "mlflow"],
}


class Timed:
    """Wraps a tracker: the seconds of its construction, every ``log()`` and ``close()``."""

    def __init__(self, name: str, tracker: Any, setup: float, clock: dict):
        self.name, self.tracker, self.clock = name, tracker, clock
        clock.setdefault(name, {"setup": 0.0, "log": 0.0, "calls": 0, "close": 0.0})
        clock[name]["setup"] += setup

    def log(self, step: int, metrics: dict) -> None:
        started = time.perf_counter()
        self.tracker.log(step, metrics)
        self.clock[self.name]["log"] += time.perf_counter() - started
        self.clock[self.name]["calls"] += 1

    def close(self) -> None:
        started = time.perf_counter()
        self.tracker.close()
        self.clock[self.name]["close"] += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:  # the mlflow plugin's on_train_end asks its tracker
        return getattr(self.tracker, name)


def timed_plugin(pm: Any, clock: dict) -> Any:
    """A plugin registering ``timed-<name>`` for every tracker already registered."""
    from tunewright import hookimpl

    factories = dict(pm.registries.kind("trackers"))

    class TimedTrackers:
        @hookimpl
        def register_trackers(self, register):
            for name, factory in factories.items():

                def make(run, name=name, factory=factory):
                    started = time.perf_counter()
                    tracker = factory(run)
                    return Timed(name, tracker, time.perf_counter() - started, clock)

                register(f"timed-{name}", make)

    return TimedTrackers()


def run_side(
    config: dict, trackers: list[str], out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    from tunewright import get_plugin_manager, load_config, run_job

    clock: dict = {}
    base = get_plugin_manager()
    pm = get_plugin_manager(plugins=[("timed-trackers", timed_plugin(base, clock))])
    job = {**config, "output": str(out), "trackers": [f"timed-{t}" for t in trackers]}
    result = run_job(load_config(job, pm.registries), pm, overwrite=True, echo=lambda m: None)
    steps = result.global_step

    return {
        "steps": steps,
        "step_seconds": result.train_seconds / steps,
        "trackers": {
            name: {
                "log_ms_per_step": 1000 * c["log"] / steps,
                "log_calls": c["calls"],
                "setup_seconds": round(c["setup"], 3),
                "close_seconds": round(c["close"], 3),
            }
            for name, c in clock.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--examples", type=int, default=0, help="keep the first N (0: all)")
    parser.add_argument("--workdir", default="bench-trackers")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 3 steps, 40 examples, jsonl and all"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.examples = 3, 1, args.examples or 40
    from tunewright.quickstart import quickstart_config, write_dataset

    workdir = Path(args.workdir)
    data = write_dataset(workdir / "data")
    if args.examples:
        lines = data.read_text(encoding="utf-8").splitlines()[: args.examples]
        data.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    config = quickstart_config(workdir, args.steps)
    config["model"] = args.model
    training = config["training"]
    training.update(logging_steps=1, eval_steps=None, num_threads=args.threads)
    training.pop("save_steps", None)
    if args.quick:
        config["data"]["max_length"] = 128
        training["batch_size"] = 4
    rounds: list[dict[str, Any]] = []
    sides = ["jsonl", "all"] if args.quick else list(SIDES)
    for i in range(args.rounds):
        order = sides if i % 2 == 0 else list(reversed(sides))
        rounds.append(
            {
                side: run_side(config, SIDES[side], workdir / f"round{i}-{side}", args)
                for side in order
            }
        )
    figures: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
        "settings": {k: v for k, v in vars(args).items() if k != "json_path"},
        "rounds": rounds,
        "sides": {},
    }
    for side in sides:
        step = statistics.median(r[side]["step_seconds"] for r in rounds)
        overhead = statistics.median(
            r[side]["step_seconds"] / r["jsonl"]["step_seconds"] - 1 for r in rounds
        )
        direct = {
            name: statistics.median(
                r[side]["trackers"][name]["log_ms_per_step"] / 1000 / r["jsonl"]["step_seconds"]
                for r in rounds
            )
            for name in SIDES[side]
            if name != "jsonl"
        }
        figures["sides"][side] = {
            "step_seconds": round(step, 4),
            "overhead_vs_jsonl": round(overhead, 4),
            "direct_share_of_step": {k: round(v, 5) for k, v in direct.items()},
            "within_3_percent": all(v <= 0.03 for v in direct.values()),
        }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return figures


if __name__ == "__main__":
    main()
