"""From a tuned model to a proven bundle: export, quantize, parity gate, manifest, atomic rename.

``export_bundle`` takes a model in memory (merged, fp32, eval mode), its tokenizer or image
processor, the task kind and held-out examples; ``export_run`` is the thin layer that reads those
from a run directory. Exporters and quantizers come from the plugin registries.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .parity import DEFAULT_THRESHOLD, ParityReport, measure_parity
from .preprocessing import copy_files, image_preprocessing, write_text_preprocessing
from .protocols import TASK_KINDS, ExportedModel
from .reference import Reference, build_reference
from .runtime.bench import bench_predictor, bundle_size_mb
from .runtime.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST, manifest_digest, sha256_file
from .runtime.registry import predictor_for
from .torch_bench import bench_torch

AUTO = "auto"
PARITY_FILE = "parity.npz"


@dataclass
class Candidate:
    quantizer: str
    exported: ExportedModel
    stage: Path
    manifest: dict
    parity: ParityReport
    latency_ms: float | None = None
    size_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"quantizer": self.quantizer, "passed": self.parity.passed, "size_mb": round(self.size_mb, 2),
                "latency_ms": self.latency_ms, **self.parity.as_dict()}


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    parity: ParityReport
    candidates: list[dict] = field(default_factory=list)


def _log_default(message: str) -> None:
    print(message, flush=True)


def choose_exporter(registries, name: str, model, task_kind: str) -> tuple[str, Any]:
    from tunewright import UsageError

    exporters = registries.kind("exporters")
    if name != AUTO:
        exporter = registries.get("exporters", name, key="--exporter")
        if not exporter.supports(model, task_kind):
            fits = [n for n, e in exporters.items() if e.supports(model, task_kind)]
            raise UsageError(f"--exporter: {name!r} cannot export a {type(model).__name__} for {task_kind} "
                             f"(exporters that can: {', '.join(fits) or 'none'})")
        return name, exporter
    fits = sorted(((e.preference, n) for n, e in exporters.items() if e.supports(model, task_kind)), reverse=True)
    if not fits:
        raise UsageError(f"no registered exporter can export a {type(model).__name__} for {task_kind} "
                         f"(registered: {', '.join(sorted(exporters)) or 'none'})")
    return fits[0][1], exporters[fits[0][1]]


def check_quantizer_name(registries, name: str) -> None:
    """Fail before any heavy work when ``--quantize`` names nothing registered."""
    from tunewright import ConfigError

    if name == AUTO:
        return
    known = registries.kind("quantizers")
    if name not in known:
        try:
            registries.get("quantizers", name, key="--quantize")
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or {AUTO!r} to keep the fastest that passes the parity gate") from None


def _describe_io(path: Path) -> dict[str, list[dict]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    row = lambda v: {"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape], "dtype": v.type}
    return {"inputs": [row(v) for v in session.get_inputs()], "outputs": [row(v) for v in session.get_outputs()]}


def _stage(candidate_model: ExportedModel, stage: Path, preprocessor, task_kind: str, *, labels, max_length: int,
           info: dict[str, Any]) -> dict:
    """Lay out a bundle (without its manifest hashes) in ``stage``; return the draft manifest."""
    copy_files(candidate_model.folder, stage)
    if task_kind == "image_classification":
        pre = image_preprocessing(preprocessor)
    else:
        pre = write_text_preprocessing(preprocessor, stage, task_kind=task_kind, max_length=max_length)
    io = _describe_io(stage / candidate_model.model_file)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "runtime": candidate_model.runtime,
        "task_kind": task_kind,
        **info,
        "exporter": {"name": candidate_model.exporter, **candidate_model.details},
        "quantization": candidate_model.quantization,
        "model": {"file": candidate_model.model_file, **io},
        "preprocessing": pre,
        "labels": labels,
    }


def _quick_latency(predictor) -> float:
    figures = bench_predictor(predictor, runs=15, warmup=3, new_tokens=16)
    return figures.get("p50_ms") or figures.get("ms_per_token")


@contextmanager
def _scratch_cwd(folder: Path):
    """Run in ``folder``: onnxruntime's shape inference saves temporary models (and their
    external data under random names) in the current directory, which must not be the user's."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def export_bundle(model, preprocessor, task_kind: str, examples: list[dict], out: str | Path, *,
                  exporter: str = AUTO, quantize: str = "int8", threshold: float = DEFAULT_THRESHOLD,
                  labels: list[str] | None = None, tokenize: Callable | None = None,
                  info: dict[str, Any] | None = None, ort_format: bool = False, bench: bool = True,
                  pm=None, max_length: int = 512, max_examples: int = 256, fidelity_examples: int = 8, new_tokens: int = 32,
                  log: Callable[[str], None] = _log_default) -> ExportResult:
    """Export ``model``, quantize it, prove it against ``model`` on ``examples`` and write the bundle.

    ``info`` goes into the manifest as is (``base_model``, ``method``, ``task``, ``run_eval``...).
    Raises :class:`tunewright.JobFailed` (exit 1) when no candidate passes the parity gate; then
    nothing is written at ``out`` (a bundle already there is left as it was).
    """
    from tunewright import JobFailed, UsageError, get_plugin_manager
    from tunewright import atomic_directory

    if task_kind not in TASK_KINDS:
        raise UsageError(f"task kind {task_kind!r} cannot be exported (exportable: {', '.join(TASK_KINDS)})")
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise UsageError(f"--out: {out} exists and is not a bundle; choose a new folder")
    pm = pm or get_plugin_manager()
    registries = pm.registries
    check_quantizer_name(registries, quantize)
    exporter_name, chosen_exporter = choose_exporter(registries, exporter, model, task_kind)
    if not examples:
        raise UsageError("the parity gate needs held-out examples, and there are none (the run kept no "
                         "validation data)")
    info = dict(info or {})
    started = time.perf_counter()
    log(f"reference: running the tuned model on {min(len(examples), max_examples)} held-out examples")
    reference = build_reference(model, preprocessor, task_kind, examples, labels=labels, tokenize=tokenize,
                                max_examples=max_examples, fidelity_examples=fidelity_examples,
                                new_tokens=new_tokens, max_length=max_length)
    calibration = _calibration(reference)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-export-{out.name}-", dir=out.parent) as work:
        work = Path(work).resolve()
        log(f"export: {exporter_name} ({chosen_exporter.description})")
        base = chosen_exporter.export(model, preprocessor, task_kind, work / "export")
        base.exporter = base.exporter or exporter_name
        quantizers = registries.kind("quantizers")
        if quantize == AUTO:
            names = [n for n, q in quantizers.items() if q.auto_candidate and q.supports(base)]
        else:
            if not quantizers[quantize].supports(base):
                fits = [n for n, q in quantizers.items() if q.supports(base)]
                raise UsageError(f"--quantize: {quantize!r} does not apply to a {base.runtime} {task_kind} model "
                                 f"from {base.exporter} (quantizers that do: {', '.join(fits)})")
            names = [quantize]
        candidates: list[Candidate] = []
        for name in names:
            log(f"quantize: {name}")
            try:
                with _scratch_cwd(work / "scratch"):
                    quantized = quantizers[name].quantize(base, work / f"q-{name}", calibration)
            except Exception as exc:
                if quantize != AUTO:
                    raise
                log(f"  {name} failed ({type(exc).__name__}: {exc}); skipped")
                continue
            stage = work / f"stage-{name}"
            draft = _stage(quantized, stage, preprocessor, task_kind, labels=labels, max_length=max_length, info=info)
            predictor = predictor_for(stage, draft, pm=pm)
            parity = measure_parity(predictor, reference, threshold)
            candidate = Candidate(name, quantized, stage, draft, parity, size_mb=bundle_size_mb(stage))
            if quantize == AUTO and parity.passed:
                candidate.latency_ms = _quick_latency(predictor)
            log(f"  parity {'passed' if parity.passed else 'FAILED'}\n{parity.table()}"
                + (f"\n  latency {candidate.latency_ms:.2f} ms" if candidate.latency_ms else ""))
            candidates.append(candidate)
            del predictor
        passing = [c for c in candidates if c.parity.passed]
        if not passing:
            figures = "\n".join(f"{c.quantizer}:\n{c.parity.table()}" for c in candidates) or "no candidate ran"
            raise JobFailed(f"parity gate failed: the exported model falls more than {threshold:g} points "
                            f"below the tuned model; no bundle written at {out}\n{figures}")
        best = min(passing, key=lambda c: (c.latency_ms if c.latency_ms is not None else 0.0))
        with atomic_directory(out) as staging:
            copy_files(best.stage, staging)
            np.savez(staging / PARITY_FILE, **best.parity.arrays)
            manifest = dict(best.manifest)
            if ort_format:
                manifest["model"]["ort_file"] = _write_ort(staging, best.exported.model_file)
            manifest["parity"] = {**best.parity.as_dict(), "examples_file": PARITY_FILE}
            if quantize == AUTO:
                manifest["quantization"] = {**manifest["quantization"], "chosen_by": AUTO,
                                            "candidates": [c.summary() for c in candidates]}
            if bench:
                log("bench: batch 1 on this machine")
                predictor = predictor_for(staging, manifest, pm=pm)
                manifest["benchmark"] = {**bench_predictor(predictor),
                                         "machine": _machine(), "size_mb": bundle_size_mb(staging)}
                del predictor
                torch_figures = bench_torch(model, preprocessor, task_kind)
                if torch_figures:
                    manifest["benchmark"]["torch_fp32"] = torch_figures
                    manifest["benchmark"]["versus_torch"] = versus_torch(manifest["benchmark"], torch_figures)
            manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            manifest["export_seconds"] = round(time.perf_counter() - started, 1)
            manifest["files"] = {
                p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                for p in sorted(staging.rglob("*")) if p.is_file() and p.name != MANIFEST}
            manifest = json.loads(json.dumps(manifest, default=_jsonable))
            manifest["manifest_sha256"] = manifest_digest(manifest)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"bundle: {out} ({manifest['quantization']['name']}, {bundle_size_mb(out):.1f} MiB)")
    return ExportResult(out, manifest, best.parity, [c.summary() for c in candidates])


def versus_torch(bundle: dict, torch_figures: dict) -> dict[str, float]:
    """Speed and size of the bundle as ratios to the tuned PyTorch model (above 1: faster)."""
    ratios = {"size": bundle["size_mb"] / torch_figures["size_mb"]}
    if "tokens_per_second" in bundle and "tokens_per_second" in torch_figures:
        ratios["speed"] = bundle["tokens_per_second"] / torch_figures["tokens_per_second"]
    elif "p50_ms" in bundle and "p50_ms" in torch_figures:
        ratios["speed"] = torch_figures["p50_ms"] / bundle["p50_ms"]
    return ratios


def _calibration(reference: Reference) -> list[dict[str, np.ndarray]]:
    if reference.classification is not None:
        return list(reference.classification.feeds[:64])
    return []


def _write_ort(folder: Path, model_file: str) -> str:
    from tunewright import JobFailed
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    source = folder / model_file
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        copy_files(folder, Path(tmp) / "in")
        try:
            convert_onnx_models_to_ort(Path(tmp) / "in" / model_file, output_dir=Path(tmp) / "out",
                                       optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:
            raise JobFailed(f"--ort-format: converting {model_file} to the ORT format failed: {exc}") from exc
        made = sorted((Path(tmp) / "out").rglob("*.ort"))
        if not made:
            raise JobFailed(f"--ort-format: the converter wrote no .ort file for {model_file}")
        target = source.with_suffix(".ort")
        made[0].replace(target)
    return target.relative_to(folder).as_posix()


def _machine() -> dict[str, Any]:
    import os

    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def export_run(run_dir: str | Path, out: str | Path, *, split: str = "validation", pm=None, **options) -> ExportResult:
    """Export a finished run: its merged model, tokenizer, task and held-out examples."""
    from tunewright import UsageError, get_plugin_manager
    from tunewright import load_run

    pm = pm or get_plugin_manager()
    run = load_run(run_dir, pm=pm)
    examples = getattr(run, split, None)
    if examples is None:
        raise UsageError(f"--split: a run keeps 'validation' and 'test' examples, not {split!r}")
    task_kind = run.task.model_kind
    load_image = getattr(run.task, "load_image", None)
    if task_kind == "image_classification" and load_image is not None:
        # the view the task trained on (paths relative to the data, checks, detail), decoded once
        examples = [{**example, "image": load_image(example)} for example in examples]
    max_length = getattr(getattr(run.config, "data", None), "max_length", 512) or 512
    tokenize = None
    if task_kind == "causal_lm" and hasattr(run.task, "tokenize"):
        tokenize = lambda example, tokenizer, length: run.task.tokenize(example, tokenizer)
    info = {"base_model": run.base_model, "method": run.method, "task": run.task_name,
            "run": {"dir": str(Path(run_dir).resolve()), "eval": run.eval}}
    if task_kind not in TASK_KINDS:
        # a kind this module does not export: an exporter plugin may carry the whole path
        _, exporter = choose_exporter(pm.registries, options.pop("exporter", AUTO), run.model, task_kind)
        if hasattr(exporter, "export_bundle"):
            return exporter.export_bundle(run.model, run.tokenizer, run.task, examples, out, info=info, pm=pm,
                                          **options)
    return export_bundle(run.model, run.tokenizer, task_kind, examples, out, labels=run.labels,
                         tokenize=tokenize, info=info, pm=pm, max_length=max_length, **options)
