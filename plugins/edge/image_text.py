"""Export of image-text models (Llava and kin) to a bundle that runs without torch.

::

    LlavaForConditionalGeneration ─┬─ vision tower + projector ──torch.onnx──────────► vision.onnx
                                   ├─ language model + head ──onnxruntime-genai builder──► model.onnx
                                   │                           (exclude_embeds: inputs_embeds in)
                                   └─ input embeddings ─────────────────────────────────► embeddings.npy

:class:`tunewright.edge.runtime.image_text.ImageTextGenerator` runs the three together (numpy
gathers the embeddings and writes the image features into the ``<image>`` rows). A quantizer
named by ``--quantize`` applies to the decoder; the vision part (a few MB) stays fp32.

The parity gate is the task's own metric computed twice, on the tuned model and on the bundle
(through :class:`OnnxImageTextModel`, which looks like a transformers model to
``task.metrics``): next-token accuracy on the held-out assistant tokens must not fall more than
``threshold`` points. Beside it: loss and exact match of both, and teacher-forced top-1 agreement
and KL(tuned || bundle) along the tuned model's own greedy continuations, through the cache.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from tunewright import JobFailed, UsageError, hookimpl, kinds
from tunewright.edge import (DEFAULT_THRESHOLD, ExportedModel, ExportResult, ParityReport, bundle_folder, chat_format,
                             check_out, write_manifest)

TASK_KIND = kinds.IMAGE_TEXT_TO_TEXT
#: language models the onnxruntime-genai builder knows, by their transformers model type
GENAI_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo"}
VISION_FILE = "vision.onnx"
EMBEDDINGS_FILE = "embeddings.npy"
#: the embedding matrix of a bundle whose decoder is quantized: int8 rows with a scale each
EMBEDDINGS_INT8_FILE = "embeddings-int8.npz"
PARITY_FILE = "parity.npz"


def _llava_parts(model) -> SimpleNamespace | None:
    """The parts of a Llava-style model, or ``None`` when it is not one."""
    inner = getattr(model, "model", None)
    parts = SimpleNamespace(
        tower=getattr(inner, "vision_tower", None),
        projector=getattr(inner, "multi_modal_projector", None),
        language_model=getattr(inner, "language_model", None),
        head=getattr(model, "lm_head", None),
        config=getattr(model, "config", None))
    if any(value is None for value in vars(parts).values()):
        return None
    if not hasattr(parts.config, "text_config") or not hasattr(parts.config, "vision_feature_layer"):
        return None
    return parts


def _vision_module(parts):
    import torch

    class VisionPart(torch.nn.Module):
        """pixel_values (V, 3, S, S) -> image features (V, N, D), as Llava computes them."""

        def __init__(self):
            super().__init__()
            self.tower, self.projector = parts.tower, parts.projector
            self.layer = parts.config.vision_feature_layer
            self.strategy = parts.config.vision_feature_select_strategy

        def forward(self, pixel_values):
            hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer]
            if self.strategy == "default":
                hidden = hidden[:, 1:]  # drop the CLS token
            return self.projector(hidden)

    return VisionPart().eval()


def _causal_lm(parts):
    """The language model and its head as a plain ``*ForCausalLM`` (weights shared, not copied)."""
    from transformers import AutoModelForCausalLM

    text_config = parts.config.text_config
    model = AutoModelForCausalLM.from_config(text_config)
    model.model = parts.language_model
    model.lm_head = parts.head
    return model.eval()


class ImageTextExporter:
    description = ("image-text models (Llava and kin): vision part to ONNX, language model through "
                   "onnxruntime-genai's builder (exclude_embeds), embeddings as .npy")
    preference = 40

    def supports(self, model, task_kind: str) -> bool:
        if task_kind != TASK_KIND:
            return False
        parts = _llava_parts(model)
        return parts is not None and getattr(parts.config.text_config, "model_type", None) in GENAI_TYPES

    def export(self, model, preprocessor, task_kind: str, out_dir: Path) -> ExportedModel:
        import torch
        from importlib.metadata import version

        from onnxruntime_genai.models.builder import create_model

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        parts = _llava_parts(model)
        model.eval()
        size = preprocessor.image_processor.size
        side = (size.get("height"), size.get("width")) if "height" in size else (size["shortest_edge"],) * 2
        example = torch.zeros(2, 3, *side)
        started = time.perf_counter()
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # torch 2.13 calls the TorchScript exporter legacy; the dynamo one needs onnxscript
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(_vision_module(parts), (example,), str(out_dir / VISION_FILE),
                                  input_names=["pixel_values"], output_names=["image_features"],
                                  dynamic_axes={"pixel_values": {0: "views"}, "image_features": {0: "views"}},
                                  opset_version=17, dynamo=False)
        except Exception as exc:
            raise JobFailed(f"torch.onnx could not export the vision part of this {type(model).__name__}: "
                            f"{type(exc).__name__}: {exc}") from exc
        embeddings = model.get_input_embeddings().weight.detach().float().cpu().numpy()  # (vocab, D)
        np.save(out_dir / EMBEDDINGS_FILE, embeddings)
        with tempfile.TemporaryDirectory(prefix="hf-", dir=out_dir.parent) as tmp:
            hf = Path(tmp) / "hf"
            _causal_lm(parts).save_pretrained(hf, safe_serialization=True)
            preprocessor.tokenizer.save_pretrained(hf)
            log = io.StringIO()
            try:
                # the builder prints a line per tensor; keep it for the error message only
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    create_model(parts.config.text_config.model_type, str(hf), str(out_dir), "fp32", "cpu",
                                 str(Path(tmp) / "cache"), hf_token="false", hf_remote="false",
                                 exclude_embeds="true")
            except Exception as exc:
                raise JobFailed(f"the onnxruntime-genai model builder could not export the language model: "
                                f"{type(exc).__name__}: {exc}\n{log.getvalue()[-2000:]}") from exc
        for path in out_dir.iterdir():
            # the bundle writes its own tokenizer.json from the tuned processor
            if path.name not in (VISION_FILE, EMBEDDINGS_FILE) and not path.name.startswith("model.onnx"):
                path.unlink()
        return ExportedModel(out_dir, task_kind, runtime="onnxruntime", model_file="model.onnx",
                             exporter="image-text",
                             details={"vision_file": VISION_FILE, "embeddings_file": EMBEDDINGS_FILE,
                                      "onnxruntime_genai": version("onnxruntime-genai"), "torch": torch.__version__,
                                      "opset": 17, "seconds": round(time.perf_counter() - started, 1)})

    # -- the whole path, for tunewright export --------------------------------------------------

    def export_bundle(self, model, processor, task, examples: list[dict], out, *, quantize: str = "none",
                      threshold: float = DEFAULT_THRESHOLD, info: dict | None = None, pm=None,
                      bench: bool = True, overwrite: bool = False, config=None, max_examples: int = 64,
                      fidelity_examples: int = 4, new_tokens: int = 16, log: Callable[[str], None] = print,
                      **_: Any) -> ExportResult:
        """The whole path for an image+text model (:func:`tunewright.edge.export_bundle` hands it
        over): :func:`export_image_text_bundle`."""
        return export_image_text_bundle(
            model, processor, task, examples, out, exporter=self, quantize=quantize, threshold=threshold,
            info=info, pm=pm, bench=bench, overwrite=overwrite, config=config, max_examples=max_examples,
            fidelity_examples=fidelity_examples, new_tokens=new_tokens, log=log)


# ---------------------------------------------------------------------------------------------
# The ONNX side as a model the task can measure
# ---------------------------------------------------------------------------------------------


class OnnxImageTextModel:
    """Looks like a transformers image-text model to ``task.metrics``: ``__call__(**batch)``
    returns ``.logits`` (torch, on the CPU) computed by the bundle's predictor."""

    training = False

    def __init__(self, predictor, config, generation_config):
        import torch

        self.predictor = predictor
        self.config = config
        self.generation_config = generation_config
        self._device_marker = torch.zeros(1)

    def parameters(self):
        yield self._device_marker

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, **_: Any):
        import torch

        batch = {"input_ids": input_ids.cpu().numpy(),
                 "attention_mask": (attention_mask if attention_mask is not None
                                    else torch.ones_like(input_ids)).cpu().numpy()}
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values.float().cpu().numpy()
        return SimpleNamespace(logits=torch.from_numpy(self.predictor.logits(batch)), past_key_values=None)


# ---------------------------------------------------------------------------------------------
# Bundle
# ---------------------------------------------------------------------------------------------


def _preprocessing(processor, model, folder: Path, config=None) -> dict[str, Any]:
    """The bundle's ``preprocessing``: the tokenizer, chat format and image tokens, the image
    processor's settings, and the views as training cut them (the job ``config``'s
    ``vision.detail`` over each image's own)."""
    from tunewright.edge.runtime.image_text import view_settings
    from tunewright.vision import settings_of

    tokenizer = processor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError("the bundle needs a fast tokenizer (tokenizer.json); this model's tokenizer is not one")
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    image = processor.image_processor
    size = dict(image.size)
    if "height" not in size:
        size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    eos = sorted(_eos(model))
    image_token_id = int(getattr(model.config, "image_token_id", None) or model.config.image_token_index)
    tokens_per_view = int(getattr(model.config, "image_seq_length", 0) or 0)
    fmt = chat_format(processor)
    return {
        "kind": "image_text",
        "tokenizer": "tokenizer.json",
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]),
        "add_special_tokens": False,
        "eos_token_ids": eos,
        "chat_format": fmt,
        "image_token": getattr(processor, "image_token", "<image>"),
        "image_token_id": image_token_id,
        "tokens_per_view": tokens_per_view,
        "views": view_settings(settings_of(config).detail),
        "image": {
            "size": {"height": int(size["height"]), "width": int(size["width"])},
            "do_resize": bool(getattr(image, "do_resize", True)),
            "resample": int(getattr(image, "resample", 2)),
            "do_rescale": bool(getattr(image, "do_rescale", True)),
            "rescale_factor": float(getattr(image, "rescale_factor", 1 / 255)),
            "do_normalize": bool(getattr(image, "do_normalize", True)),
            "image_mean": [float(x) for x in image.image_mean],
            "image_std": [float(x) for x in image.image_std],
            "layout": "NCHW", "channels": "RGB",
        },
    }


def _eos(model) -> set[int]:
    value = getattr(model.generation_config, "eos_token_id", None)
    if value is None:
        value = getattr(model.config, "eos_token_id", None)
    return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None}


def _link_files(source: Path, target: Path, names: list[str] | None = None, *, copy: bool = False) -> None:
    """Hard-link (or, with ``copy`` or across file systems, copy) files of ``source`` into
    ``target``. onnx refuses external data with several links, so what a quantizer reads is copied."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(source).iterdir()):
        if path.is_file() and (names is None or path.name in names):
            try:
                if copy:
                    raise OSError("copy asked for")
                (target / path.name).hardlink_to(path)
            except OSError:
                shutil.copy2(path, target / path.name)


def write_int8_embeddings(matrix: np.ndarray, path: Path) -> None:
    """Symmetric int8 per row: ``weight`` (V, D) int8 and ``scale`` (V,) float32, row = weight * scale."""
    scale = np.abs(matrix).max(axis=1) / 127.0  # (V,)
    scale[scale == 0] = 1.0
    weight = np.clip(np.round(matrix / scale[:, None]), -127, 127).astype(np.int8)
    with open(path, "wb") as handle:
        np.savez(handle, weight=weight, scale=scale.astype(np.float32))


def _batches(task, processor, features: list[dict], size: int = 4) -> list[dict]:
    return [task.collate(features[i:i + size], processor) for i in range(0, len(features), size)]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _fidelity(model, predictor, task, features: list[dict], processor, *, examples: int, new_tokens: int):
    """Top-1 agreement and KL(tuned || bundle) along the tuned model's greedy continuations,
    teacher-forced through the bundle's cache; the arrays ``verify`` reruns."""
    import torch

    agree, kls, arrays = [], [], {}
    kept = 0
    for feature in features[:examples]:
        prompt, pixels = task.prompt_of(task.collate([feature], processor), model)
        if prompt is None:
            continue
        inputs = {"pixel_values": pixels} if pixels is not None else {}
        with torch.inference_mode():
            sequence = prompt.tolist()
            for _ in range(new_tokens):  # greedy, eos not special: the gate wants new_tokens positions
                logits = model(input_ids=torch.tensor([sequence]), **inputs).logits[0, -1]
                sequence.append(int(logits.argmax()))
            continuation = sequence[len(prompt):]
            full = model(input_ids=torch.tensor([sequence]), **inputs).logits[0].float()
            reference = full[len(prompt) - 1: len(sequence) - 1].numpy().astype(np.float64)  # (new, V)
        ours = predictor.teacher_forced_logits(prompt.tolist(), continuation,
                                               None if pixels is None else pixels.numpy()).astype(np.float64)
        ref_logp, ours_logp = _log_softmax(reference), _log_softmax(ours)
        agree.append(ours.argmax(-1) == reference.argmax(-1))
        kls.append((np.exp(ref_logp) * (ref_logp - ours_logp)).sum(-1))
        top = np.argsort(-ref_logp, axis=-1)[:, :32]
        arrays.update({f"{kept}.prompt_ids": np.asarray(prompt.tolist(), np.int64),
                       f"{kept}.continuation": np.asarray(continuation, np.int64),
                       f"{kept}.pixel_values": (pixels.numpy() if pixels is not None
                                                else np.zeros((0, 3, 1, 1), np.float32)),
                       f"{kept}.reference_top1": reference.argmax(-1).astype(np.int64),
                       f"{kept}.reference_top_ids": top.astype(np.int32),
                       f"{kept}.reference_top_logprobs": np.take_along_axis(ref_logp, top, -1).astype(np.float32)})
        kept += 1
    arrays["count"] = np.asarray(kept)
    cat = np.concatenate
    figures = {"top1_agreement": float(cat(agree).mean()) if agree else 0.0,
               "kl_per_token": float(cat(kls).mean()) if kls else 0.0,
               "kl_max": float(cat(kls).max()) if kls else 0.0,
               "teacher_forced_tokens": float(cat(agree).size) if agree else 0.0}
    return figures, arrays


def export_image_text_bundle(model, processor, task, examples: list[dict], out, *, exporter=None,
                             quantize: str = "none", threshold: float = DEFAULT_THRESHOLD,
                             info: dict | None = None, pm=None, bench: bool = True, overwrite: bool = False,
                             config=None, max_examples: int = 64, fidelity_examples: int = 4,
                             new_tokens: int = 16, log: Callable[[str], None] = print) -> ExportResult:
    """Export a tuned image-text ``model`` (merged, fp32, eval mode), prove it against itself on
    held-out ``examples`` with ``task``'s metric, and write the bundle at ``out`` atomically.
    ``out`` follows :func:`tunewright.edge.check_out` (an existing bundle is replaced only with
    ``overwrite``; anything else is refused). ``config``: the job config (its ``vision.detail``
    is recorded, so that the runtime cuts views as training did).

    Raises :class:`tunewright.JobFailed` when the bundle's next-token accuracy falls more than
    ``threshold`` points below the tuned model's; nothing is written at ``out`` then.
    """
    from tunewright import get_plugin_manager
    from tunewright.edge.runtime import predictor_for
    from tunewright.edge.runtime.bench import bundle_size_mb
    from tunewright.edge.runtime.bundle import FORMAT_NAME, FORMAT_VERSION

    out = Path(out)
    check_out(out, overwrite=overwrite)
    if not examples:
        raise UsageError("the parity gate needs held-out examples, and there are none (the run kept no "
                         "validation data)")
    pm = pm or get_plugin_manager()
    quantizers = pm.registries.kind("quantizers")
    names = ["none"] if quantize in ("none", "auto") else [quantize]
    if quantize == "auto":
        names += [n for n, q in quantizers.items() if q.auto_candidate and n != "none"]
    unknown = [n for n in names if n not in quantizers]
    if unknown:
        raise UsageError(f"--quantize: {unknown[0]!r} is not a registered quantizer "
                         f"(registered: {', '.join(sorted(quantizers))}, or auto)")
    exporter = exporter or ImageTextExporter()
    model.eval()
    started = time.perf_counter()
    features = [task.tokenize(example, processor) for example in examples[:max_examples]]
    batches = _batches(task, processor, features)
    log(f"reference: the tuned model on {len(features)} held-out examples")
    tuned = task.metrics(model, batches)
    metric = task.primary_metric
    direction = dict(getattr(task, "metric_directions", None) or {}).get(metric, "max")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-export-{out.name}-", dir=out.parent) as work:
        work = Path(work).resolve()
        log(f"export: {exporter.description}")
        base = exporter.export(model, processor, TASK_KIND, work / "export")
        pre = _preprocessing(processor, model, work / "export", config)
        candidates = []
        for name in names:
            stage = work / f"stage-{name}"
            decoder = base
            if name != "none":
                log(f"quantize: {name} (the decoder)")
                _link_files(base.folder, work / f"decoder-{name}", [p.name for p in base.folder.iterdir()
                                                                    if p.name.startswith("model.onnx")],
                            copy=True)
                # the decoder alone is what a causal-LM quantizer knows (inputs_embeds aside)
                alone = ExportedModel(work / f"decoder-{name}", kinds.CAUSAL_LM, exporter=base.exporter)
                if not quantizers[name].supports(alone):
                    if quantize != "auto":
                        raise UsageError(f"--quantize: {name!r} does not apply to this model's decoder")
                    continue
                previous = os.getcwd()
                os.chdir(work)  # onnxruntime's shape inference writes temporary files in the cwd
                try:
                    decoder = quantizers[name].quantize(alone, work / f"q-{name}", [])
                except Exception as exc:
                    if quantize != "auto":
                        raise
                    log(f"  {name} failed ({type(exc).__name__}: {exc}); skipped")
                    continue
                finally:
                    os.chdir(previous)
            _link_files(base.folder, stage, [VISION_FILE, "tokenizer.json"])
            if name == "none":
                _link_files(base.folder, stage, [EMBEDDINGS_FILE])
                embeddings = {"embeddings_file": EMBEDDINGS_FILE, "embeddings_dtype": "float32"}
            else:
                # 49k x 576 fp32 is 113 MB, 40% of an int8 bundle: rows as int8 with one scale each
                write_int8_embeddings(np.load(base.folder / EMBEDDINGS_FILE), stage / EMBEDDINGS_INT8_FILE)
                embeddings = {"embeddings_file": EMBEDDINGS_INT8_FILE, "embeddings_dtype": "int8-rows"}
            _link_files(decoder.folder, stage, [p.name for p in Path(decoder.folder).iterdir()
                                                if p.name.startswith("model.onnx")])
            manifest = {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "runtime": "onnxruntime",
                "task_kind": TASK_KIND, **(info or {}),
                "exporter": {"name": base.exporter, **base.details},
                "quantization": {**decoder.quantization, "applies_to": "decoder"} if name != "none"
                else {"name": "none"},
                "model": {"file": "model.onnx", "vision_file": VISION_FILE, **embeddings},
                "preprocessing": pre,
                "labels": None,
            }
            predictor = predictor_for(stage, manifest, pm=pm)
            adapter = OnnxImageTextModel(predictor, model.config, model.generation_config)
            ours = task.metrics(adapter, batches)
            figures, arrays = _fidelity(model, predictor, task, features, processor,
                                        examples=fidelity_examples, new_tokens=new_tokens)
            figures.update({f"tuned_{k}": float(v) for k, v in tuned.items()})
            figures.update({f"bundle_{k}": float(v) for k, v in ours.items()})
            report = ParityReport(metric, direction, {k: float(v) for k, v in tuned.items()},
                                  {k: float(v) for k, v in ours.items()}, threshold, figures, arrays)
            log(f"  {name}: parity {'passed' if report.passed else 'FAILED'}\n{report.table()}")
            candidates.append((name, stage, manifest, report, predictor))
        passing = [c for c in candidates if c[3].passed]
        if not passing:
            tables = "\n".join(f"{c[0]}:\n{c[3].table()}" for c in candidates) or "no candidate ran"
            raise JobFailed(f"parity gate failed: the exported model falls more than {threshold:g} points "
                            f"below the tuned model; no bundle written at {out}\n{tables}")
        # the smallest that passes: every candidate runs the same tokens, so size decides
        name, stage, manifest, report, predictor = min(passing, key=lambda c: bundle_size_mb(c[1]))
        with bundle_folder(out, overwrite=overwrite) as staging:
            _link_files(stage, staging)
            np.savez_compressed(staging / PARITY_FILE, **report.arrays)
            manifest["parity"] = {**report.as_dict(), "examples_file": PARITY_FILE}
            if quantize == "auto":
                manifest["quantization"]["chosen_by"] = "auto"
                manifest["quantization"]["candidates"] = [
                    {"quantizer": c[0], "passed": c[3].passed, "size_mb": round(bundle_size_mb(c[1]), 2),
                     **c[3].as_dict()} for c in candidates]
            if bench:
                log("bench: batch 1 on this machine")
                manifest["benchmark"] = {**bench_image_text(predictor, features[0], task, processor, model),
                                         "size_mb": bundle_size_mb(staging)}
            manifest = write_manifest(staging, manifest, started=started)
        del predictor, candidates
    log(f"bundle: {out} ({manifest['quantization']['name']}, {bundle_size_mb(out):.1f} MiB)")
    return ExportResult(out, manifest, report, [])


def bench_image_text(predictor, feature: dict, task, processor, model, *, new_tokens: int = 32) -> dict[str, float]:
    """Batch-1 figures of a bundle on one held-out example: time to the first token (vision part
    and prompt included) and tokens per second after it, eos not special."""
    prompt, pixels = task.prompt_of(task.collate([feature], processor), model)
    ids = prompt.tolist()
    pixels = None if pixels is None else pixels.numpy()
    list(predictor.generate_ids(ids, pixels, max_new_tokens=2, stop_at_eos=False))  # warm up
    start = time.perf_counter()
    first = None
    count = 0
    for _ in predictor.generate_ids(ids, pixels, max_new_tokens=new_tokens, stop_at_eos=False):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    rate = (count - 1) / (end - first) if count > 1 and first else 0.0
    return {"prompt_tokens": float(len(ids)), "views": float(0 if pixels is None else pixels.shape[0]),
            "first_token_ms": (first - start) * 1000 if first else 0.0,
            "tokens_per_second": rate, "new_tokens": float(new_tokens)}



@hookimpl(trylast=True)
def register_exporters(register):
    register("image-text", ImageTextExporter())


@hookimpl(trylast=True)
def register_edge_runtimes(register):
    from tunewright.edge.runtime.image_text import ImageTextGenerator

    register("image-text-generator", ImageTextGenerator)
