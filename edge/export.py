"""From a tuned model to a proven bundle: export, quantize, parity gate, manifest, atomic rename.

``export_bundle`` takes a model in memory (merged, fp32, eval mode), its tokenizer or image
processor, the task that trained it and held-out examples; ``export_run`` is the thin layer that
reads those from a run directory. Exporters, quantizers and edge runtimes come from the plugin
registries. Every kind of model takes this one path: a model that exports to several files (an
image+text model's vision part, decoder and embedding table) is one ``ExportedModel`` with
``parts``, quantized part by part (:func:`quantize_export`) and proven, described and benched as a
whole.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .console import captured_output
from .parity import DEFAULT_THRESHOLD, ParityReport, measure_parity
from .preprocessing import copy_files, write_preprocessing
from .protocols import ExportedModel
from .reference import build_reference
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
        return {
            "quantizer": self.quantizer,
            "scheme": self.exported.quantization.get("name"),
            "passed": self.parity.passed,
            "size_mb": round(self.size_mb, 2),
            "latency_ms": self.latency_ms,
            **self.parity.as_dict(),
        }


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    parity: ParityReport
    candidates: list[dict] = field(default_factory=list)


def _log_default(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# --out: a bundle folder is recognised by its manifest; nothing else is ever replaced
# ----------------------------------------------------------------------------------------------


def _listing(folder: Path, names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that a new bundle must not replace; raises :class:`tunewright.UsageError`.

    Allowed: a path that does not exist, an empty folder, and, with ``overwrite``, a folder holding
    a tunewright bundle and nothing else (its ``manifest.json`` names the format and lists every
    other file). A file, a folder holding anything else, or a bundle with files added to it are
    refused: they may be the user's, and nothing of theirs is ever deleted.
    """
    from tunewright import UsageError

    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise UsageError(
            f"--out: {out} exists and is not a folder; choose a new folder for the bundle"
        )
    present = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() or p.is_symlink()
    )
    if not present and not any(out.iterdir()):
        return
    manifest = None
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise UsageError(
            f"--out: {out} exists and is not a tunewright bundle (it holds {_listing(out, present)}); "
            "nothing was changed; choose a new folder, or an existing bundle with --overwrite"
        )
    listed = set(manifest.get("files") or {}) | {MANIFEST}
    foreign = [name for name in present if name not in listed]
    if foreign:
        raise UsageError(
            f"--out: {out} holds a bundle and files that are not part of it ({_listing(out, foreign)}); "
            "nothing was changed; move those files away or choose a new folder"
        )
    if not overwrite:
        raise UsageError(
            f"--out: {out} holds a bundle already; pass --overwrite to replace it, or choose a new folder"
        )


@contextmanager
def bundle_folder(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success put it at ``out`` (:func:`check_out` is
    asked again first, so ``out`` must still be new, empty, or a bundle replaced with ``overwrite``).

    An old bundle at ``out`` is checked again (it may have changed during the export), renamed
    aside, replaced by the new one, and only then deleted: at no moment is there a half-written
    folder at ``out``, and an error leaves the old bundle where it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    old = None
    try:
        yield staging
        check_out(out, overwrite=overwrite)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}-", dir=out.parent))
            os.replace(out, old / "bundle")
        os.replace(staging, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old / "bundle", out)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# choosing the exporter and the quantizers
# ----------------------------------------------------------------------------------------------


def choose_exporter(registries, name: str, model, task_kind: str) -> tuple[str, Any]:
    from tunewright import UsageError

    exporters = registries.kind("exporters")
    if name != AUTO:
        exporter = registries.get("exporters", name, key="--exporter")
        if not exporter.supports(model, task_kind):
            fits = [n for n, e in exporters.items() if e.supports(model, task_kind)]
            raise UsageError(
                f"--exporter: {name!r} cannot export a {type(model).__name__} for {task_kind} "
                f"(exporters that can: {', '.join(fits) or 'none'})"
            )
        return name, exporter
    fits = sorted(
        ((e.preference, n) for n, e in exporters.items() if e.supports(model, task_kind)),
        reverse=True,
    )
    if not fits:
        raise UsageError(
            f"no registered exporter can export a {type(model).__name__} for task kind {task_kind!r} "
            f"(registered: {', '.join(sorted(exporters)) or 'none'})"
        )
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
            raise ConfigError(
                f"{exc}; or {AUTO!r} to keep the fastest that passes the parity gate"
            ) from None


def _resolve_task(task, pm):
    """A task object, the name of a registered one, or a task kind that exactly one registered task
    trains (``sequence_classification`` -> ``classification``)."""
    if not isinstance(task, str):
        return task
    tasks = pm.registries.kind("tasks")
    if task not in tasks:
        serving = [
            name
            for name, candidate in tasks.items()
            if getattr(candidate, "model_kind", None) == task
        ]
        if len(serving) == 1:
            return tasks[serving[0]]
        if serving:
            from tunewright import UsageError

            raise UsageError(
                f"task: several registered tasks train the kind {task!r} ({', '.join(sorted(serving))}); "
                "name the task"
            )
    return pm.registries.get("tasks", task, key="task")


# ----------------------------------------------------------------------------------------------
# the bundle
# ----------------------------------------------------------------------------------------------


def _describe_io(path: Path) -> dict[str, list[dict]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # not a warning per overridable initializer (LoRA adapters)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    row = lambda v: {
        "name": v.name,
        "shape": [d if isinstance(d, int) else str(d) for d in v.shape],
        "dtype": v.type,
    }
    return {
        "inputs": [row(v) for v in session.get_inputs()],
        "outputs": [row(v) for v in session.get_outputs()],
    }


def _stage(
    candidate_model: ExportedModel,
    stage: Path,
    preprocessor,
    *,
    labels,
    max_length: int,
    info: dict[str, Any],
    config=None,
    exporter=None,
    model=None,
) -> dict:
    """Lay out a bundle (without its manifest hashes) in ``stage``: the files of the export and of
    each of its parts side by side, and the preprocessing (the exporter's own when it has
    ``preprocessing``); return the draft manifest."""
    for name, path in candidate_model.layout().items():
        _link(path, stage / name)
    preprocessing = getattr(exporter, "preprocessing", None)
    if callable(preprocessing):
        pre = preprocessing(model, preprocessor, stage, max_length=max_length, config=config)
    else:
        pre = write_preprocessing(preprocessor, stage, max_length=max_length, config=config)
    io = _describe_io(stage / candidate_model.model_file)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "runtime": candidate_model.runtime,
        "task_kind": candidate_model.task_kind,
        **info,
        "exporter": {"name": candidate_model.exporter, **candidate_model.details},
        "quantization": candidate_model.quantization,
        "model": {"file": candidate_model.model_file, **io, **candidate_model.model_entries},
        "preprocessing": pre,
        "labels": labels,
    }


def _data_profile(folder: Path, manifest: dict, examples: list[dict]) -> dict | None:
    """The examples' profile (prompt-length quantiles; label shares for classifiers) that a server
    measures drift against (:mod:`tunewright.edge.runtime.serve.profile`); ``None`` when it
    cannot be measured, which never stops an export."""
    from .runtime.serve.profile import data_profile

    try:
        return data_profile(folder, manifest, examples)
    except Exception:  # a profile is a convenience: a tokenizer quirk must not fail the export
        return None


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def _supports(quantizer, exported: ExportedModel) -> bool:
    """Whether ``quantizer`` applies to ``exported``: to the model, or to one of its parts at least."""
    if exported.parts:
        return any(quantizer.supports(part) for part in exported.parts.values())
    return quantizer.supports(exported)


def _refusal(quantizer, exported: ExportedModel) -> str | None:
    why = getattr(quantizer, "refusal", None)
    if not callable(why):
        return None
    if exported.parts:
        reasons = [
            f"{role}: {reason}" for role, part in exported.parts.items() if (reason := why(part))
        ]
        return "; ".join(reasons) or None
    return why(exported)


def quantize_export(
    quantizer,
    name: str,
    exported: ExportedModel,
    out_dir: Path,
    calibration: list[dict],
    exporter=None,
) -> ExportedModel:
    """``exported`` rewritten by ``quantizer`` (registered as ``name``) into ``out_dir``: the model
    itself, or each of its ``parts`` that the quantizer supports (the others as exported, no
    calibration: a part's inputs are not the task's), then what depends on them through the
    exporter's ``assemble`` (:class:`tunewright.edge.ExporterOptions`)."""
    out_dir = Path(out_dir)
    if not exported.parts:
        return quantizer.quantize(exported, out_dir, calibration)
    parts, rewritten, scheme = {}, [], None
    for role, part in exported.parts.items():
        if not quantizer.supports(part):
            parts[role] = part
            continue
        parts[role] = quantizer.quantize(part, out_dir / role, [])
        rewritten.append(role)
        scheme = scheme or parts[role].quantization
    quantization = dict(scheme or {"name": name})
    if quantization.get("name") != "none":
        quantization["applies_to"] = rewritten[0] if len(rewritten) == 1 else rewritten
    candidate = exported.moved(exported.folder, parts=parts, quantization=quantization)
    assemble = getattr(exporter, "assemble", None)
    if callable(assemble) and quantization.get("name") != "none":
        (out_dir / "assembled").mkdir(parents=True, exist_ok=True)
        candidate = assemble(candidate, out_dir / "assembled")
    return candidate


def _quick_latency(predictor) -> float:
    figures = bench_predictor(predictor, runs=15, warmup=3, new_tokens=16)
    return figures.get("p50_ms") or figures.get("ms_per_token")


@contextmanager
def _quiet(log: Callable[[str], None], who: str):
    """Keep what third-party tools print off the console (:func:`captured_output`); when the
    block fails, show the end of it through ``log`` before the error goes on."""
    printed = None
    try:
        with captured_output() as printed:
            yield
    except BaseException:
        if printed is not None and printed.tail():
            log(f"{who} printed before it failed:\n{printed.tail()}")
        raise


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


#: fewer held-out examples than this and the parity gate says it cannot judge much
FEW_PARITY_EXAMPLES = 20


def reference_limits(
    exporter: Any,
    max_examples: int | None,
    fidelity_examples: int | None,
    new_tokens: int | None,
) -> tuple[int, int, int]:
    """How many held-out examples the parity gate scores, how many of them a generator continues
    and by how many tokens: the ones given, else the exporter's ``reference_limits``, else 256, 8
    and 32."""
    limits = {
        "max_examples": 256,
        "fidelity_examples": 8,
        "new_tokens": 32,
        **dict(getattr(exporter, "reference_limits", None) or {}),
    }
    return (
        max_examples or limits["max_examples"],
        fidelity_examples or limits["fidelity_examples"],
        new_tokens or limits["new_tokens"],
    )


def export_bundle(
    model,
    preprocessor,
    task,
    examples: list[dict],
    out: str | Path,
    *,
    labels: list[str] | None = None,
    exporter: str = AUTO,
    quantize: str = "int8",
    threshold: float = DEFAULT_THRESHOLD,
    info: dict[str, Any] | None = None,
    ort_format: bool = False,
    bench: bool = True,
    overwrite: bool = False,
    pm=None,
    max_length: int | None = None,
    max_examples: int | None = None,
    fidelity_examples: int | None = None,
    new_tokens: int | None = None,
    batch_size: int = 8,
    config=None,
    calibration_examples: list[dict] | None = None,
    log: Callable[[str], None] = _log_default,
) -> ExportResult:
    """Export ``model``, quantize it, prove it against ``model`` on ``examples`` and write the bundle.

    ``task`` is the :class:`tunewright.Task` that trained the model (or its registered name, or a
    task kind that one registered task trains): its
    ``model_kind`` chooses exporters and the edge runtime, its ``tokenize``/``collate``/``metrics``
    give both models' figures on ``examples``. ``info`` goes into the manifest as is
    (``base_model``, ``method``, ``task``, ``run``...). ``out`` must not exist, be empty, or (with
    ``overwrite``) hold a bundle and nothing else (:func:`check_out`). ``max_length``: the longest
    text the bundle's runtime tokenizes for a classifier (default 512, capped by the tokenizer's
    ``model_max_length``). ``max_examples`` held-out examples are scored (default 256),
    ``fidelity_examples`` of them (default 8) continued ``new_tokens`` tokens (default 32) by a
    generator for teacher-forced fidelity; an exporter whose models run slower may lower the
    defaults (``reference_limits``, :class:`tunewright.edge.ExporterOptions`).
    ``config``: the job config the model trained with (its ``vision:`` settings decide how the
    bundle cuts images, as training did). ``calibration_examples``: examples that quantizers which
    calibrate activations (int8-static) see, the run's training examples where there are some
    (default: the held-out ones).

    A model that exports to several files (an image+text model: vision part, decoder, embedding
    table) takes this same path: its exporter returns them as one :class:`ExportedModel` with
    ``parts``, quantizers rewrite the parts, and the gate, manifest and bench are the same.

    Raises :class:`tunewright.UsageError` (exit 2) for a bad ``out``, name or input before any
    heavy work, and :class:`tunewright.JobFailed` (exit 1) when no candidate passes the parity
    gate; then nothing is written at ``out`` (a bundle already there is left as it was).
    """
    from tunewright import JobFailed, UsageError, get_plugin_manager

    out = Path(out)
    check_out(out, overwrite=overwrite)
    pm = pm or get_plugin_manager()
    registries = pm.registries
    task = _resolve_task(task, pm)
    task_kind = task.model_kind
    check_quantizer_name(registries, quantize)
    exporter_name, chosen_exporter = choose_exporter(registries, exporter, model, task_kind)
    if not examples:
        raise UsageError(
            "the parity gate needs held-out examples, and there are none (the run kept no "
            "validation data)"
        )
    if callable(getattr(chosen_exporter, "export_bundle", None)):
        import warnings

        warnings.warn(
            f"the exporter {exporter_name!r} carries the whole export itself (export_bundle), which is "
            "deprecated: return several files as ExportedModel.parts and export_bundle proves and writes "
            "them",
            DeprecationWarning,
            stacklevel=2,
        )
        return chosen_exporter.export_bundle(
            model,
            preprocessor,
            task,
            examples,
            out,
            quantize=quantize,
            threshold=threshold,
            info=info,
            ort_format=ort_format,
            bench=bench,
            overwrite=overwrite,
            pm=pm,
            max_length=max_length,
            config=config,
            calibration_examples=calibration_examples,
            log=log,
        )
    max_examples, fidelity_examples, new_tokens = reference_limits(
        chosen_exporter, max_examples, fidelity_examples, new_tokens
    )
    info = dict(info or {})
    started = time.perf_counter()
    log(f"reference: the tuned model on {min(len(examples), max_examples)} held-out examples")
    if min(len(examples), max_examples) < FEW_PARITY_EXAMPLES:
        # one example moves the metric by 100/n points: the gate cannot tell a lossy bundle from noise
        log(
            f"WARNING: the parity gate rests on {min(len(examples), max_examples)} held-out examples (fewer "
            f"than {FEW_PARITY_EXAMPLES}): one example moves its metric by "
            f"{100 / max(1, min(len(examples), max_examples)):.0f} points; hold out more data"
        )
    reference = build_reference(
        model,
        preprocessor,
        task,
        examples,
        labels=labels,
        max_examples=max_examples,
        fidelity_examples=fidelity_examples,
        new_tokens=new_tokens,
        batch_size=batch_size,
        calibration_examples=calibration_examples,
    )
    bundle_max_length = int(max_length or 512)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-export-{out.name}-", dir=out.parent) as work:
        work = Path(work).resolve()
        log(f"export: {exporter_name} ({chosen_exporter.description})")
        with _quiet(log, f"the exporter {exporter_name!r}"):
            base = chosen_exporter.export(model, preprocessor, task_kind, work / "export")
        base.exporter = base.exporter or exporter_name
        quantizers = registries.kind("quantizers")
        if quantize == AUTO:
            names = [n for n, q in quantizers.items() if q.auto_candidate and _supports(q, base)]
        else:
            if not _supports(quantizers[quantize], base):
                fits = [n for n, q in quantizers.items() if _supports(q, base)]
                reason = _refusal(quantizers[quantize], base)
                raise UsageError(
                    f"--quantize: {quantize!r} does not apply to a {base.runtime} {task_kind} model "
                    f"from {base.exporter}"
                    + (f": {reason}" if reason else "")
                    + f" (quantizers that do: {', '.join(fits)})"
                )
            names = [quantize]
        candidates: list[Candidate] = []
        for name in names:
            log(f"quantize: {name}")
            try:
                with _scratch_cwd(work / "scratch"), _quiet(log, f"the quantizer {name!r}"):
                    # parts take no calibration (their inputs are not the task's): none is collated
                    calibration = [] if base.parts else reference.calibration()
                    quantized = quantize_export(
                        quantizers[name],
                        name,
                        base,
                        work / f"q-{name}",
                        calibration,
                        chosen_exporter,
                    )
            except Exception as exc:
                if quantize != AUTO:
                    raise
                log(f"  {name} failed ({type(exc).__name__}: {exc}); skipped")
                continue
            if quantized.quantization.get("name") != name:
                quantized.quantization = {**quantized.quantization, "requested": name}
            if "calibration_examples" in quantized.quantization:
                quantized.quantization = {
                    **quantized.quantization,
                    "calibration": reference.calibration_source,
                }
            stage = work / f"stage-{name}"
            draft = _stage(
                quantized,
                stage,
                preprocessor,
                labels=labels,
                max_length=bundle_max_length,
                info=info,
                config=config,
                exporter=chosen_exporter,
                model=model,
            )
            predictor = predictor_for(stage, draft, pm=pm)
            parity = measure_parity(
                predictor, reference, threshold, model_bytes=quantized.size_bytes()
            )
            candidate = Candidate(
                name, quantized, stage, draft, parity, size_mb=bundle_size_mb(stage)
            )
            if quantize == AUTO and parity.passed:
                candidate.latency_ms = _quick_latency(predictor)
            log(
                f"  parity {'passed' if parity.passed else 'FAILED'}\n{parity.table()}"
                + (f"\n  latency {candidate.latency_ms:.2f} ms" if candidate.latency_ms else "")
            )
            candidates.append(candidate)
            del predictor
        passing = [c for c in candidates if c.parity.passed]
        if not passing:
            figures = (
                "\n".join(f"{c.quantizer}:\n{c.parity.table()}" for c in candidates)
                or "no candidate ran"
            )
            raise JobFailed(
                f"parity gate failed: the exported model falls more than {threshold:g} points "
                f"below the tuned model; no bundle written at {out}\n{figures}"
            )
        best = min(passing, key=lambda c: c.latency_ms if c.latency_ms is not None else 0.0)
        with bundle_folder(out, overwrite=overwrite) as staging:
            copy_files(best.stage, staging)
            np.savez_compressed(staging / PARITY_FILE, **best.parity.arrays)
            manifest = dict(best.manifest)
            if ort_format:
                manifest["model"]["ort_file"] = _write_ort(staging, best.exported.model_file)
            manifest["parity"] = {**best.parity.as_dict(), "examples_file": PARITY_FILE}
            if quantize == AUTO:
                manifest["quantization"] = {
                    **manifest["quantization"],
                    "chosen_by": AUTO,
                    "candidates": [c.summary() for c in candidates],
                }
            if bench:
                log("bench: batch 1 on this machine")
                predictor = predictor_for(staging, manifest, pm=pm)
                manifest["benchmark"] = {
                    **bench_predictor(predictor),
                    "machine": _machine(),
                    "size_mb": bundle_size_mb(staging),
                }
                torch_figures = bench_torch(model, predictor)
                del predictor
                manifest["benchmark"]["torch_fp32"] = torch_figures
                manifest["benchmark"]["versus_torch"] = versus_torch(
                    manifest["benchmark"], torch_figures
                )
            profile = _data_profile(staging, manifest, examples)
            if profile:
                manifest["data_profile"] = profile
            manifest = write_manifest(staging, manifest, started=started)
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


def _write_ort(folder: Path, model_file: str) -> str:
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    from tunewright import JobFailed

    source = folder / model_file
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        copy_files(folder, Path(tmp) / "in")
        try:
            convert_onnx_models_to_ort(
                Path(tmp) / "in" / model_file,
                output_dir=Path(tmp) / "out",
                optimization_styles=[OptimizationStyle.Fixed],
            )
        except Exception as exc:
            raise JobFailed(
                f"--ort-format: converting {model_file} to the ORT format failed: {exc}"
            ) from exc
        made = sorted((Path(tmp) / "out").rglob("*.ort"))
        if not made:
            raise JobFailed(f"--ort-format: the converter wrote no .ort file for {model_file}")
        target = source.with_suffix(".ort")
        made[0].replace(target)
    return target.relative_to(folder).as_posix()


def write_manifest(staging: Path, manifest: dict[str, Any], *, started: float) -> dict[str, Any]:
    """Seal a bundle being written in ``staging``: stamp ``manifest`` with the time and how long
    the export took (since ``started``, a ``time.perf_counter()``), the size and SHA-256 of every
    file already in the folder, and its own digest; write it as ``manifest.json``. Call it last,
    once every other file is in place. Returns the manifest as written (JSON types only)."""
    manifest = dict(manifest)
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["export_seconds"] = round(time.perf_counter() - started, 1)
    manifest["files"] = {
        p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = json.loads(json.dumps(manifest, default=_jsonable))
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


#: how many training examples a run lends to quantizers that calibrate
CALIBRATION_EXAMPLES = 64


def training_examples(run_dir: Path, count: int = CALIBRATION_EXAMPLES) -> list[dict]:
    """Up to ``count`` of a run's training examples (``data/train.jsonl``, as the run transformed
    them), spread evenly over the file; none when the run kept no training data."""
    path = Path(run_dir) / "data" / "train.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) > count:
        step = len(lines) / count
        lines = [lines[int(i * step)] for i in range(count)]
    return [json.loads(line) for line in lines]


def judging_task(run: Any, run_dir: str | Path, pm: Any) -> tuple[Any, Callable, str]:
    """The task whose figures judge ``run``'s export at the parity gate (``TaskOptions.parity_task``),
    how the run's examples become that task's, and its name (empty: the run's own task judges,
    its examples as they are). A task that sets ``parity_task`` to ``None`` does not export: a
    :class:`UsageError` says so."""
    from tunewright import UsageError

    task = run.task
    judge = getattr(task, "parity_task", "")
    if judge is None:
        raise UsageError(
            f"{run_dir}: a {run.task_name} run does not export: no figure of an exported model "
            f"judges it at the parity gate (task {run.task_name!r} sets parity_task to None)"
        )
    if not judge:
        return task, list, ""
    judging = pm.registries.get("tasks", judge, key=f"{run.task_name}'s parity_task")
    return judging, task.parity_examples, judge


def export_run(
    run_dir: str | Path, out: str | Path, *, split: str = "validation", pm=None, **options
) -> ExportResult:
    """Export a finished run: its merged model, tokenizer, task, labels and held-out examples;
    quantizers that calibrate see its training examples, the parity gate the held-out ones."""
    from tunewright import UsageError, get_plugin_manager, load_run

    pm = pm or get_plugin_manager()
    check_out(Path(out), overwrite=bool(options.get("overwrite")))  # before the model loads
    run = load_run(run_dir, pm=pm)
    examples = getattr(run, split, None)
    if examples is None:
        raise UsageError(f"--split: a run keeps 'validation' and 'test' examples, not {split!r}")
    max_length = getattr(getattr(run.config, "data", None), "max_length", None)
    info = {
        "base_model": run.base_model,
        "method": run.method,
        "task": run.task_name,
        "run": {"dir": str(Path(run_dir).resolve()), "eval": run.eval},
    }
    task, judged, judge = judging_task(run, run_dir, pm)
    options.setdefault("calibration_examples", training_examples(Path(run_dir)) or None)
    if judge:
        # the held-out and the calibration examples become the judging task's
        examples = judged(examples)
        if options["calibration_examples"]:
            options["calibration_examples"] = judged(options["calibration_examples"])
        info["parity_task"] = judge
    result = export_bundle(
        run.model,
        run.tokenizer,
        task,
        examples,
        out,
        labels=run.labels,
        info=info,
        pm=pm,
        max_length=max_length,
        config=run.config,
        **options,
    )
    announce_export(pm, run_dir, result, options.get("log") or _log_default)
    return result


def announce_export(pm, run_dir, result: ExportResult, log: Callable[[str], None]) -> None:
    """Call the ``on_export`` hooks for a bundle written from ``run_dir`` and show what they
    answer; a hook that fails is a warning (the bundle is written and proven by then)."""
    try:
        lines = pm.hook.on_export(
            run_dir=str(run_dir), bundle=str(result.bundle), manifest=result.manifest
        )
    except Exception as exc:  # the bundle is written and proven: a plugin's failure is not ours
        import warnings

        warnings.warn(
            f"an on_export hook failed ({type(exc).__name__}: {exc}); the bundle {result.bundle} "
            "is written",
            stacklevel=3,
        )
    else:
        for line in lines:
            if line:
                log(str(line))
