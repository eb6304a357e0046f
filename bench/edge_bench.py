"""Edge benchmark: PyTorch fp32 eager vs optimum's CLI defaults vs our bundles, side by side.

    python bench/edge_bench.py [--only classifier|generator] [--out bench-out] [--json results.json]

- ``minilm-l6`` text classification (chatterbot-corpus categories; the head is fitted here in a few
  seconds on frozen features, so that the metric means something): bundle size, batch-1 latency
  p50 at 16 tokens, peak memory, fidelity (max abs logit diff, top-1 agreement), accuracy.
- ``smollm2-135m-instruct`` generation (chatterbot-corpus prompts): size, tokens per second
  (greedy, 64 new tokens after a 32-token prompt, KV cache), peak memory, fidelity (teacher-forced
  top-1 agreement and KL along the model's own continuations), next-token accuracy on held-out
  replies.

Timings and peak memory come from a fresh process per variant, so one variant's memory does not
count against the next. Ratios are against PyTorch fp32 eager.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CATEGORIES = ["food", "sports", "money", "science", "history", "computers"]


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
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype="float32").eval(), AutoTokenizer.from_pretrained(path), path


# ----------------------------------------------------------------------------------------------
# measuring one variant in a fresh process
# ----------------------------------------------------------------------------------------------

def measure_in_subprocess(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(spec: dict) -> dict:
    """Runs in the child: time one variant, report its figures and the process's peak memory."""
    from tunewright.edge.runtime import peak_memory_mb
    from tunewright.edge.runtime.bench import bench_predictor, bundle_size_mb

    kind = spec["kind"]
    if spec["engine"] == "torch":
        return _measure_torch(spec)
    from tunewright.edge.runtime import predictor_for

    folder = Path(spec["folder"])
    manifest = json.loads(Path(spec["manifest"]).read_text()) if spec.get("manifest") else None
    if manifest is None:
        from tunewright.edge.runtime import load_bundle

        predictor = load_bundle(folder)
        manifest = predictor.manifest
    else:
        predictor = predictor_for(folder, manifest)
    figures = bench_predictor(predictor, tokens=16, runs=100 if kind != "causal_lm" else 3, new_tokens=64)
    figures.update(peak_memory_mb=peak_memory_mb(), size_mb=spec.get("size_mb") or bundle_size_mb(folder))
    return figures


def _measure_torch(spec: dict) -> dict:
    import torch

    from tunewright.edge.runtime import peak_memory_mb
    from tunewright.edge.runtime.bench import SAMPLE_TEXT

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    if spec["kind"] == "causal_lm":
        model, tokenizer, path = tuned_generator()
        size = sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) / 2**20
        prompt = tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"][:32]
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            rates = []
            for _ in range(3):
                out = model(input_ids=ids, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                start = time.perf_counter()
                for _ in range(63):
                    out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                rates.append(63 / (time.perf_counter() - start))
        return {"tokens_per_second": float(np.median(rates)), "peak_memory_mb": peak_memory_mb(), "size_mb": size}
    train, _, labels = classification_data()
    model, tokenizer = tuned_classifier(train, labels)
    size = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    ids = tokenizer(SAMPLE_TEXT, add_special_tokens=True)["input_ids"]
    ids = torch.tensor([ids[:15] + ids[-1:]])
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    seconds = []
    with torch.inference_mode():
        for _ in range(5):
            model(**feeds)
        for _ in range(100):
            start = time.perf_counter()
            model(**feeds)
            seconds.append(time.perf_counter() - start)
    return {"p50_ms": float(np.percentile(seconds, 50) * 1000), "p95_ms": float(np.percentile(seconds, 95) * 1000),
            "min_ms": float(np.min(seconds) * 1000), "peak_memory_mb": peak_memory_mb(), "size_mb": size}


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


def _folder_mb(folder: Path, names: list[str] | None = None) -> float:
    files = [folder / n for n in names] if names else [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.exists()) / 2**20


def optimum_cli(model, tokenizer, task: str, work: Path) -> tuple[Path, Path]:
    """What a user would do by hand: ``optimum-cli export onnx`` then ``optimum-cli onnxruntime
    quantize --avx512_vnni`` (optimum's default dynamic int8 recipe for this CPU)."""
    hf = work / "hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    exported, quantized = work / "onnx", work / "onnx-q"
    subprocess.run(["optimum-cli", "export", "onnx", "--model", str(hf), "--task", task, str(exported)],
                   check=True, capture_output=True)
    subprocess.run(["optimum-cli", "onnxruntime", "quantize", "--onnx_model", str(exported), "--avx512_vnni",
                    "-o", str(quantized)], check=True, capture_output=True)
    return exported, quantized


def run_model(name: str, work: Path, variants: list[tuple[str, str]]) -> list[dict]:
    from tunewright import get_plugin_manager
    from tunewright.edge import export_bundle, measure_parity
    from tunewright.edge.reference import build_reference
    from tunewright.edge.runtime import predictor_for

    pm = get_plugin_manager()
    if name == "classifier":
        train, held_out, labels = classification_data()
        model, tokenizer = tuned_classifier(train, labels)
        kind, task, examples = "sequence_classification", "text-classification", held_out
    else:
        model, tokenizer, _ = tuned_generator()
        labels = None
        kind, task, examples = "causal_lm", "text-generation-with-past", chat_data()
    our_task = pm.registries.tasks["classification" if name == "classifier" else "chat"]
    reference = build_reference(model, tokenizer, our_task, examples, labels=labels, fidelity_examples=8,
                                new_tokens=32)
    rows = [{"variant": "torch fp32 eager", **measure_in_subprocess({"engine": "torch", "kind": kind})}]
    rows[0].update(metric=reference.tuned_metrics[reference.metric] * 100)
    print(json.dumps(rows[-1]), flush=True)

    start = time.perf_counter()
    exported, quantized = optimum_cli(model, tokenizer, task, work / f"{name}-optimum-cli")
    cli_seconds = time.perf_counter() - start
    for label, folder in (("optimum-cli fp32", exported), ("optimum-cli default int8", quantized)):
        model_file = "model_quantized.onnx" if "int8" in label else "model.onnx"
        manifest_path = _draft_manifest(folder, model_file, tokenizer, kind, labels)
        manifest = json.loads(manifest_path.read_text())
        parity = measure_parity(predictor_for(folder, manifest), reference)
        row = {"variant": label, "export_s": round(cli_seconds, 1),
               **measure_in_subprocess({"engine": "onnx", "kind": kind, "folder": str(folder),
                                        "manifest": str(manifest_path),
                                        "size_mb": _folder_mb(folder, [model_file, model_file + "_data"])}),
               **_parity_row(parity)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for exporter, quantize in variants:
        out = work / f"{name}-{exporter}-{quantize}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        try:
            result = export_bundle(model, tokenizer, our_task, examples, out, exporter=exporter, quantize=quantize,
                                   labels=labels, pm=pm, bench=False, log=lambda m: None)
        except Exception as exc:  # a failed gate is a figure too
            row = {"variant": f"ours {exporter} {quantize}", "error": str(exc).splitlines()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        row = {"variant": f"ours {exporter} {result.manifest['quantization']['name']}",
               "export_s": round(time.perf_counter() - start, 1),
               **measure_in_subprocess({"engine": "bundle", "kind": kind, "folder": str(out)}),
               **_parity_row(result.parity)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _parity_row(parity) -> dict:
    return {"metric": parity.bundle_metric * 100, "tuned_metric": parity.tuned_metric * 100, "passed": parity.passed,
            **{k: v for k, v in parity.figures.items() if k in ("max_abs_diff", "top1_agreement", "kl_per_token")}}


def table(name: str, rows: list[dict]) -> str:
    base = rows[0]
    speed_key = "tokens_per_second" if "tokens_per_second" in base else "p50_ms"
    lines = [f"\n{name}", f"{'variant':34} {'size MiB':>9} {'x size':>7} {speed_key:>17} {'x speed':>8} "
             f"{'peak MiB':>9} {'top1 agr':>8} {'maxdiff/KL':>10} {'metric':>7}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:34} {row['error']}")
            continue
        speed = row.get(speed_key)
        ratio = (speed / base[speed_key]) if speed_key == "tokens_per_second" else (base[speed_key] / speed)
        fid = row.get("kl_per_token", row.get("max_abs_diff", 0.0))
        lines.append(f"{row['variant']:34} {row['size_mb']:9.1f} {row['size_mb'] / base['size_mb']:7.2f} "
                     f"{speed:17.2f} {ratio:8.2f} {row['peak_memory_mb']:9.0f} "
                     f"{row.get('top1_agreement', 1.0):8.3f} {fid:10.4f} {row['metric']:7.2f}")
    return "\n".join(lines)


CLASSIFIER_VARIANTS = [("optimum", "none"), ("optimum", "int8"), ("optimum", "int8-static"), ("optimum", "int8-block")]
GENERATOR_VARIANTS = [("optimum", "int8-block"), ("genai", "none"), ("genai", "int8-block"), ("genai", "int4")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["classifier", "generator"])
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--json", default=None)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(json.loads(args.measure))))
        return
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.only in (None, "classifier"):
        results["minilm-l6 classification (batch 1, 16 tokens)"] = run_model("classifier", work, CLASSIFIER_VARIANTS)
    if args.only in (None, "generator"):
        results["smollm2-135m-instruct generation (64 new tokens)"] = run_model("generator", work, GENERATOR_VARIANTS)
    for name, rows in results.items():
        print(table(name, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
