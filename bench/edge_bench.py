"""Edge benchmark: PyTorch fp32 eager vs optimum's CLI defaults vs our bundles, side by side.

    python bench/edge_bench.py [--only classifier|generator] [--rounds 3] [--quick]
                               [--out bench-out] [--json results.json]

- ``minilm-l6`` text classification (chatterbot-corpus categories; the head is fitted here in a few
  seconds on frozen features, so that the metric means something): size, batch-1 latency at 16
  tokens, peak memory, fidelity (max abs logit diff, top-1 agreement) and accuracy.
- ``smollm2-135m-instruct`` generation (chatterbot-corpus prompts): size, tokens per second
  (greedy, 64 new tokens after a 32-token prompt, KV cache, the first token left out), peak memory,
  fidelity (teacher-forced top-1 agreement and KL along the model's own continuations) and the
  chat task's mean token accuracy on held-out replies.

Every figure of quality comes from the same code: the task's own metrics (``task.metrics``) on the
same held-out batches, for PyTorch and for every ONNX variant (through the edge parity gate).
Timings and peak memory come from a fresh process per variant and round; with ``--rounds N`` the
variants take turns N times and each speed figure is the median over rounds, so that a load that
comes and goes falls on all of them alike. The load average is recorded before and after: figures
taken with a load above the core count are not to be quoted as the machine's speed. Ratios are
against PyTorch fp32 eager. ``--quick`` is a smoke run (minutes): fewer examples, runs and
variants.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CATEGORIES = ["food", "sports", "money", "science", "history", "computers"]
#: bound of one measuring child process, and of one optimum-cli call
CHILD_TIMEOUT_S = 900


# ----------------------------------------------------------------------------------------------
# data from chatterbot-corpus (a PyPI package, offline)
# ----------------------------------------------------------------------------------------------

def _corpus() -> dict[str, list[list[str]]]:
    import yaml

    root = Path(importlib.util.find_spec("chatterbot_corpus").origin).parent / "data" / "english"
    out = {}
    for path in sorted(root.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        out[path.stem] = [[str(x) for x in conv] for conv in data.get("conversations", []) if len(conv) >= 2]
    return out


def classification_data(seed: int = 0) -> tuple[list[dict], list[dict], list[str]]:
    corpus = _corpus()
    rows = [{"text": conv[0], "label": cat} for cat in CATEGORIES for conv in corpus.get(cat, [])]
    rng = random.Random(seed)
    rng.shuffle(rows)
    cut = int(len(rows) * 0.7)
    return rows[:cut], rows[cut:], CATEGORIES


def chat_data(seed: int = 0, count: int = 32) -> list[dict]:
    corpus = _corpus()
    pairs = [(conv[0], conv[1]) for convs in corpus.values() for conv in convs]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs[:count]]


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

def model_dir(name: str) -> Path:
    from tunewright import get_plugin_manager

    return Path(get_plugin_manager().registries.models[name].resolve())


def tuned_classifier(train: list[dict], labels: list[str]):
    """minilm-l6 with a classification head fitted on frozen [CLS] pooled features."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = model_dir("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}).eval()
    with torch.no_grad():
        enc = tokenizer([r["text"] for r in train], padding=True, truncation=True, max_length=64, return_tensors="pt")
        pooled = model.bert(**enc).pooler_output
    y = torch.tensor([labels.index(r["label"]) for r in train])
    head = model.classifier
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(pooled), y)
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


def tuned_generator():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir("smollm2-135m-instruct")
    return AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval(), AutoTokenizer.from_pretrained(path), path


# ----------------------------------------------------------------------------------------------
# measuring one variant in a fresh process
# ----------------------------------------------------------------------------------------------

def measure_in_subprocess(spec: dict) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(spec: dict) -> dict:
    """Runs in the child: time one variant, report its figures and the process's peak memory."""
    from tunewright.edge.runtime import load_bundle, peak_memory_mb, predictor_for
    from tunewright.edge.runtime.bench import bench_predictor, bundle_size_mb

    if spec["engine"] == "torch":
        return _measure_torch(spec)
    folder = Path(spec["folder"])
    if spec.get("manifest"):  # a folder optimum's CLI wrote, described by a draft manifest
        predictor = predictor_for(folder, json.loads(Path(spec["manifest"]).read_text()))
    else:
        predictor = load_bundle(folder)
    figures = bench_predictor(predictor, tokens=16, runs=spec["runs"], new_tokens=spec["new_tokens"])
    figures.update(peak_memory_mb=peak_memory_mb(), size_mb=spec.get("size_mb") or bundle_size_mb(folder))
    return figures


def _measure_torch(spec: dict) -> dict:
    """The tuned model, fp32 eager, on the inputs the bundles' benchmark uses (same text, same
    token counts, the first generated token left out of tokens per second)."""
    import torch

    from tunewright.edge.runtime import peak_memory_mb
    from tunewright.edge.runtime.bench import SAMPLE_TEXT, percentiles

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["kind"] == "causal_lm":
        model, tokenizer, path = tuned_generator()
        size = sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) / 2**20
        ids = torch.tensor([tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"][:32]])  # (1, 32)
        after_first = spec["new_tokens"] - 1
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm up
            rates = []
            for _ in range(3):
                out = model(input_ids=ids, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
                start = time.perf_counter()
                for _ in range(after_first):
                    out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                rates.append(after_first / (time.perf_counter() - start))
        return {"tokens_per_second": float(np.median(rates)), "peak_memory_mb": peak_memory_mb(), "size_mb": size}
    train, _, labels = classification_data()
    model, tokenizer = tuned_classifier(train, labels)
    size = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    ids = tokenizer(SAMPLE_TEXT, add_special_tokens=True)["input_ids"]
    ids = torch.tensor([ids[:15] + ids[-1:]])  # (1, 16), [SEP] kept
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    seconds = []
    with torch.inference_mode():
        for _ in range(5):
            model(**feeds)
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            model(**feeds)
            seconds.append(time.perf_counter() - start)
    return {**percentiles(seconds), "peak_memory_mb": peak_memory_mb(), "size_mb": size}


# ----------------------------------------------------------------------------------------------
# the variants
# ----------------------------------------------------------------------------------------------

def _draft_manifest(folder: Path, model_file: str, tokenizer, task_kind: str, labels) -> Path:
    """A manifest for a folder that optimum's CLI wrote, so that the same predictor times it."""
    from tunewright.edge.preprocessing import write_preprocessing

    pre = write_preprocessing(tokenizer, folder, max_length=512)
    manifest = {"runtime": "onnxruntime", "task_kind": task_kind, "model": {"file": model_file},
                "preprocessing": pre, "labels": labels}
    path = folder / "draft-manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def _folder_mb(folder: Path, names: list[str]) -> float:
    return sum((folder / n).stat().st_size for n in names if (folder / n).exists()) / 2**20


def optimum_cli(model, tokenizer, task: str, work: Path) -> tuple[Path, Path]:
    """What a user would do by hand: ``optimum-cli export onnx`` then ``optimum-cli onnxruntime
    quantize --avx512_vnni`` (optimum's default dynamic int8 recipe for this CPU)."""
    hf = work / "hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    exported, quantized = work / "onnx", work / "onnx-q"
    subprocess.run(["optimum-cli", "export", "onnx", "--model", str(hf), "--task", task, str(exported)],
                   check=True, capture_output=True, timeout=CHILD_TIMEOUT_S)
    subprocess.run(["optimum-cli", "onnxruntime", "quantize", "--onnx_model", str(exported), "--avx512_vnni",
                    "-o", str(quantized)], check=True, capture_output=True, timeout=CHILD_TIMEOUT_S)
    return exported, quantized


def _parity_row(parity) -> dict:
    return {"metric": parity.bundle_metric * 100, "tuned_metric": parity.tuned_metric * 100, "passed": parity.passed,
            **{k: v for k, v in parity.figures.items() if k in ("max_abs_diff", "top1_agreement", "kl_per_token")}}


def run_model(name: str, work: Path, *, quick: bool, rounds: int) -> list[dict]:
    from tunewright import get_plugin_manager
    from tunewright.edge import export_bundle, measure_parity
    from tunewright.edge.reference import build_reference
    from tunewright.edge.runtime import predictor_for

    pm = get_plugin_manager()
    if name == "classifier":
        train, held_out, labels = classification_data()
        model, tokenizer = tuned_classifier(train, labels)
        kind, cli_task, task = "sequence_classification", "text-classification", pm.registries.tasks["classification"]
        examples = held_out[:60] if quick else held_out
        variants = [("optimum", "int8")] if quick else CLASSIFIER_VARIANTS
        runs, new_tokens, with_cli = (30 if quick else 200), 64, True
    else:
        model, tokenizer, _ = tuned_generator()
        labels = None
        kind, cli_task, task = "causal_lm", "text-generation-with-past", pm.registries.tasks["chat"]
        examples = chat_data(count=8 if quick else 64)
        variants = [("genai", "int8")] if quick else GENERATOR_VARIANTS
        runs, new_tokens, with_cli = 3, (16 if quick else 64), not quick
    reference = build_reference(model, tokenizer, task, examples, labels=labels,
                                fidelity_examples=2 if quick else 8, new_tokens=32)
    print(f"{name}: the tuned model's {reference.metric} on {len(examples)} held-out examples: "
          f"{reference.tuned_metrics[reference.metric]:.4f}", flush=True)
    # each entry: a row of quality figures, and how to time it (None: nothing to time)
    entries: list[tuple[dict, dict | None]] = [(
        {"variant": "torch fp32 eager", "metric": reference.tuned_metrics[reference.metric] * 100},
        {"engine": "torch", "kind": kind, "runs": runs, "new_tokens": new_tokens})]

    if with_cli:
        start = time.perf_counter()
        exported, quantized = optimum_cli(model, tokenizer, cli_task, work / f"{name}-optimum-cli")
        cli_seconds = time.perf_counter() - start
        for label, folder in (("optimum-cli fp32", exported), ("optimum-cli default int8", quantized)):
            model_file = "model_quantized.onnx" if "int8" in label else "model.onnx"
            manifest_path = _draft_manifest(folder, model_file, tokenizer, kind, labels)
            parity = measure_parity(predictor_for(folder, json.loads(manifest_path.read_text())), reference)
            entries.append(({"variant": label, "export_s": round(cli_seconds, 1), **_parity_row(parity)},
                            {"engine": "onnx", "kind": kind, "folder": str(folder), "manifest": str(manifest_path),
                             "size_mb": _folder_mb(folder, [model_file, model_file + "_data"]), "runs": runs,
                             "new_tokens": new_tokens}))

    for exporter, quantize in variants:
        out = work / f"{name}-{exporter}-{quantize}"
        start = time.perf_counter()
        try:
            result = export_bundle(model, tokenizer, task, examples, out, exporter=exporter, quantize=quantize,
                                   labels=labels, pm=pm, bench=False, overwrite=out.exists(),
                                   fidelity_examples=2 if quick else 8, log=lambda m: None)
        except Exception as exc:  # a failed gate is a figure too
            entries.append(({"variant": f"ours {exporter} {quantize}", "error": str(exc).splitlines()[0]}, None))
            continue
        quantization = result.manifest["quantization"]
        entries.append(({"variant": f"ours {exporter} {quantize} ({quantization['name']})",
                         "export_s": round(time.perf_counter() - start, 1), **_parity_row(result.parity)},
                        {"engine": "bundle", "kind": kind, "folder": str(out), "runs": runs,
                         "new_tokens": new_tokens}))

    timings: list[list[dict]] = [[] for _ in entries]
    for round_index in range(rounds):
        for index, (row, spec) in enumerate(entries):
            if spec is not None:
                timings[index].append(measure_in_subprocess(spec))
        print(f"{name}: round {round_index + 1} of {rounds} timed", flush=True)
    rows = []
    for (row, spec), measured in zip(entries, timings):
        rows.append({**row, **_median_figures(measured)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _median_figures(measured: list[dict]) -> dict:
    """One figure per key: the median over rounds (sizes do not change); the first error if every
    round failed."""
    good = [m for m in measured if "error" not in m]
    if not good:
        return {"error": measured[0]["error"]} if measured else {}
    out = dict(good[0])
    for key in ("p50_ms", "p95_ms", "min_ms", "mean_ms", "tokens_per_second", "first_token_ms", "peak_memory_mb"):
        if all(key in m for m in good):
            out[key] = float(np.median([m[key] for m in good]))
    out["rounds"] = len(good)
    return out


def table(name: str, rows: list[dict]) -> str:
    base = rows[0]
    speed_key = "tokens_per_second" if "tokens_per_second" in base else "p50_ms"
    lines = [f"\n{name}", f"{'variant':44} {'size MiB':>9} {'x size':>7} {speed_key:>17} {'x speed':>8} "
             f"{'peak MiB':>9} {'top1 agr':>8} {'maxdiff/KL':>10} {'metric':>7}"]
    for row in rows:
        if "error" in row or speed_key not in row:
            lines.append(f"{row['variant']:44} {row.get('error', 'not timed')}")
            continue
        speed = row[speed_key]
        ratio = (speed / base[speed_key]) if speed_key == "tokens_per_second" else (base[speed_key] / speed)
        fidelity = row.get("kl_per_token", row.get("max_abs_diff", 0.0))
        lines.append(f"{row['variant']:44} {row['size_mb']:9.1f} {row['size_mb'] / base['size_mb']:7.2f} "
                     f"{speed:17.2f} {ratio:8.2f} {row['peak_memory_mb']:9.0f} "
                     f"{row.get('top1_agreement', 1.0):8.3f} {fidelity:10.4f} {row['metric']:7.2f}")
    return "\n".join(lines)


CLASSIFIER_VARIANTS = [("optimum", "none"), ("optimum", "int8"), ("optimum", "int8-static"),
                       ("optimum", "int8-block")]
GENERATOR_VARIANTS = [("genai", "none"), ("genai", "int8"), ("genai", "int4"), ("optimum", "int8-block")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["classifier", "generator"])
    parser.add_argument("--out", default="bench-out", help="working folder for exports (kept, reused)")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    parser.add_argument("--rounds", type=int, default=1, help="time every variant this many times, in turns")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer examples, runs and variants")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"load_average_before": os.getloadavg(), "cores": os.cpu_count(), "quick": args.quick,
                     "rounds": args.rounds}
    names = {"classifier": "minilm-l6 classification (batch 1, 16 tokens)",
             "generator": "smollm2-135m-instruct generation (greedy, batch 1)"}
    for key, title in names.items():
        if args.only in (None, key):
            results[title] = run_model(key, work, quick=args.quick, rounds=args.rounds)
    results["load_average_after"] = os.getloadavg()
    for title in names.values():
        if title in results:
            print(table(title, results[title]))
    before, after = results["load_average_before"][0], results["load_average_after"][0]
    loaded = max(before, after) > 0.5 * (os.cpu_count() or 1)
    print(f"\nload average {before:.1f} before, {after:.1f} after, {os.cpu_count()} cores"
          + (": UNDER LOAD, timings are not the machine's speed" if loaded else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
