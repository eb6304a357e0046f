"""The exporter of image-text models (Llava and kin): one model, three files that run together.

::

    LlavaForConditionalGeneration ─┬─ vision tower + projector ──torch.onnx──────────► vision.onnx
                                   ├─ language model + head ──onnxruntime-genai builder──► model.onnx
                                   │                           (exclude_embeds: inputs_embeds in)
                                   └─ input embeddings ─────────────────────────────────► embeddings.npy

The export is one :class:`tunewright.edge.ExportedModel` whose ``parts`` hold the decoder, so
:func:`tunewright.edge.export_bundle` takes it as it takes any model: a quantizer named by
``--quantize`` rewrites the decoder (the vision part, a few MB, stays fp32), :meth:`ImageTextExporter.assemble`
stores the embedding table as int8 rows beside a quantized decoder, and the parity gate, the
manifest and the bench (beside the tuned PyTorch model) are every other bundle's.
:class:`tunewright.edge.runtime.image_text.ImageTextGenerator` runs the three files together
(numpy gathers the embeddings and writes the image features into the ``<image>`` rows).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from tunewright import JobFailed, UsageError, kinds
from tunewright.edge import ExportedModel, chat_format

TASK_KIND = kinds.IMAGE_TEXT_TO_TEXT
#: language models the onnxruntime-genai builder knows, by their transformers model type
GENAI_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo"}
VISION_FILE = "vision.onnx"
EMBEDDINGS_FILE = "embeddings.npy"
#: the embedding matrix of a bundle whose decoder is quantized: int8 rows with a scale each
EMBEDDINGS_INT8_FILE = "embeddings-int8.npz"
#: the role of the decoder among the export's parts
DECODER = "decoder"


def _llava_parts(model) -> SimpleNamespace | None:
    """The parts of a Llava-style model, or ``None`` when it is not one."""
    inner = getattr(model, "model", None)
    parts = SimpleNamespace(
        tower=getattr(inner, "vision_tower", None),
        projector=getattr(inner, "multi_modal_projector", None),
        language_model=getattr(inner, "language_model", None),
        head=getattr(model, "lm_head", None),
        config=getattr(model, "config", None),
    )
    if any(value is None for value in vars(parts).values()):
        return None
    if not hasattr(parts.config, "text_config") or not hasattr(
        parts.config, "vision_feature_layer"
    ):
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
    description = (
        "image-text models (Llava and kin): vision part to ONNX, language model through "
        "onnxruntime-genai's builder (exclude_embeds), embeddings as .npy"
    )
    preference = 40
    #: the task's exact match runs the bundle's decoder without a cache: fewer examples than a
    #: one-file model's defaults (as this exporter's own path took before it joined export_bundle)
    reference_limits: ClassVar[dict[str, int]] = {
        "max_examples": 64,
        "fidelity_examples": 4,
        "new_tokens": 16,
    }

    def supports(self, model, task_kind: str) -> bool:
        if task_kind != TASK_KIND:
            return False
        parts = _llava_parts(model)
        return (
            parts is not None
            and getattr(parts.config.text_config, "model_type", None) in GENAI_TYPES
        )

    def export(self, model, preprocessor, task_kind: str, out_dir: Path) -> ExportedModel:
        """``vision.onnx`` and ``embeddings.npy`` in ``out_dir/shared``, the decoder (a part of
        its own, which quantizers see as a causal LM) in ``out_dir/decoder``."""
        from importlib.metadata import version

        import torch
        from onnxruntime_genai.models.builder import create_model

        out_dir = Path(out_dir)
        shared, decoder = out_dir / "shared", out_dir / DECODER
        shared.mkdir(parents=True, exist_ok=True)
        decoder.mkdir(parents=True, exist_ok=True)
        parts = _llava_parts(model)
        model.eval()
        size = preprocessor.image_processor.size
        side = (
            (size.get("height"), size.get("width"))
            if "height" in size
            else (size["shortest_edge"],) * 2
        )
        example = torch.zeros(2, 3, *side)
        started = time.perf_counter()
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                # torch 2.13 calls the TorchScript exporter legacy; the dynamo one needs onnxscript
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    _vision_module(parts),
                    (example,),
                    str(shared / VISION_FILE),
                    input_names=["pixel_values"],
                    output_names=["image_features"],
                    dynamic_axes={"pixel_values": {0: "views"}, "image_features": {0: "views"}},
                    opset_version=17,
                    dynamo=False,
                )
        except Exception as exc:
            raise JobFailed(
                f"torch.onnx could not export the vision part of this {type(model).__name__}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        embeddings = (
            model.get_input_embeddings().weight.detach().float().cpu().numpy()
        )  # (vocab, D)
        np.save(shared / EMBEDDINGS_FILE, embeddings)
        with tempfile.TemporaryDirectory(prefix="hf-", dir=out_dir.parent) as tmp:
            hf = Path(tmp) / "hf"
            _causal_lm(parts).save_pretrained(hf, safe_serialization=True)
            preprocessor.tokenizer.save_pretrained(hf)
            try:
                # what the builder prints (a line per layer) export_bundle keeps off the console
                create_model(
                    parts.config.text_config.model_type,
                    str(hf),
                    str(decoder),
                    "fp32",
                    "cpu",
                    str(Path(tmp) / "cache"),
                    hf_token="false",
                    hf_remote="false",
                    exclude_embeds="true",
                )
            except Exception as exc:
                raise JobFailed(
                    f"the onnxruntime-genai model builder could not export the language model: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        for path in decoder.iterdir():
            # the decoder alone: the bundle writes its own tokenizer.json from the tuned processor
            if not path.name.startswith("model.onnx"):
                path.unlink()
        return ExportedModel(
            shared,
            task_kind,
            runtime="onnxruntime",
            model_file="model.onnx",
            exporter="image-text",
            details={
                "onnxruntime_genai": version("onnxruntime-genai"),
                "torch": torch.__version__,
                "opset": 17,
                "seconds": round(time.perf_counter() - started, 1),
            },
            model_entries={
                "vision_file": VISION_FILE,
                "embeddings_file": EMBEDDINGS_FILE,
                "embeddings_dtype": "float32",
            },
            # the decoder alone is what a causal-LM quantizer knows (inputs_embeds aside)
            parts={DECODER: ExportedModel(decoder, kinds.CAUSAL_LM, exporter="image-text")},
        )

    def preprocessing(
        self, model, preprocessor, folder: Path, *, max_length: int, config=None
    ) -> dict[str, Any]:
        """The bundle's ``preprocessing`` (:func:`preprocessing`)."""
        return preprocessing(preprocessor, model, folder, config)

    def assemble(self, candidate: ExportedModel, out_dir: Path) -> ExportedModel:
        """Beside a quantized decoder, the embedding table as int8 rows with a scale each (49k x
        576 fp32 is 113 MB, 40% of an int8 bundle), listed in ``quantization.embedding_tables``."""
        out_dir = Path(out_dir)
        shared = Path(candidate.folder)
        try:
            (out_dir / VISION_FILE).hardlink_to(shared / VISION_FILE)
        except OSError:
            shutil.copy2(shared / VISION_FILE, out_dir / VISION_FILE)
        matrix = np.load(shared / EMBEDDINGS_FILE)  # (vocab, D)
        write_int8_embeddings(matrix, out_dir / EMBEDDINGS_INT8_FILE)
        quantization = dict(candidate.quantization)
        quantization["embedding_tables"] = [
            *quantization.get("embedding_tables", []),
            {
                "table": "input embeddings",
                "file": EMBEDDINGS_INT8_FILE,
                "shape": [int(n) for n in matrix.shape],
                "bits": 8,
                "scheme": "symmetric int8 rows, one float32 scale each",
                "tied_head": None,
            },
        ]
        entries = {
            **candidate.model_entries,
            "embeddings_file": EMBEDDINGS_INT8_FILE,
            "embeddings_dtype": "int8-rows",
        }
        return candidate.moved(out_dir, model_entries=entries, quantization=quantization)


def preprocessing(processor, model, folder: Path, config=None) -> dict[str, Any]:
    """The bundle's ``preprocessing``: the tokenizer, chat format and image tokens, the image
    processor's settings, and the views as training cut them (the job ``config``'s
    ``vision.detail`` over each image's own)."""
    from tunewright.edge.runtime.image_text import view_settings
    from tunewright.vision import settings_of

    tokenizer = processor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            "the bundle needs a fast tokenizer (tokenizer.json); this model's tokenizer is not one"
        )
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    image = processor.image_processor
    size = dict(image.size)
    if "height" not in size:
        size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    eos = sorted(_eos(model))
    image_token_id = int(
        getattr(model.config, "image_token_id", None) or model.config.image_token_index
    )
    tokens_per_view = int(getattr(model.config, "image_seq_length", 0) or 0)
    fmt = chat_format(processor)
    return {
        "kind": "image_text",
        "tokenizer": "tokenizer.json",
        "pad_token_id": int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        ),
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
            "layout": "NCHW",
            "channels": "RGB",
        },
    }


def _eos(model) -> set[int]:
    value = getattr(model.generation_config, "eos_token_id", None)
    if value is None:
        value = getattr(model.config, "eos_token_id", None)
    return {
        int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None
    }


def write_int8_embeddings(matrix: np.ndarray, path: Path) -> None:
    """Symmetric int8 per row: ``weight`` (V, D) int8 and ``scale`` (V,) float32, row = weight * scale."""
    scale = np.abs(matrix).max(axis=1) / 127.0  # (V,)
    scale[scale == 0] = 1.0
    weight = np.clip(np.round(matrix / scale[:, None]), -127, 127).astype(np.int8)
    with open(path, "wb") as handle:
        np.savez(handle, weight=weight, scale=scale.astype(np.float32))
