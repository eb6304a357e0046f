"""Built-in exporters: optimum-onnx, torch's own ONNX exporter, onnxruntime-genai's model builder.

==========  ==========================================================  ==========
name        what                                                        preference
==========  ==========================================================  ==========
genai       causal LMs the genai model builder knows (Llama, Qwen...)   30
optimum     Hugging Face architectures optimum knows: sequence          20
            classification, causal LM with its KV cache, ViT-family
            image classifiers
torch       any classifier whose forward takes the usual inputs and     10
            returns ``.logits`` or a tensor (no KV cache)
==========  ==========================================================  ==========

``--exporter auto`` takes the supporting exporter with the highest preference, so a causal LM
goes to the genai builder (measured about 2.3x torch fp32 in fp32, 5-7x in int4 on 2 cores).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tunewright import JobFailed, hookimpl, kinds
from tunewright.edge import ExportedModel

OPTIMUM_TASKS = {
    kinds.SEQUENCE_CLASSIFICATION: "text-classification",
    kinds.CAUSAL_LM: "text-generation-with-past",
    kinds.IMAGE_CLASSIFICATION: "image-classification",
}


def _model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _keep_only_onnx(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file() and not (
            path.suffix == ".onnx" or path.name.endswith((".onnx_data", ".onnx.data"))
        ):
            path.unlink()


class OptimumExporter:
    description = "optimum-onnx (Hugging Face architectures; decoders with their KV cache)"
    preference = 20

    def supports(self, model, task_kind: str) -> bool:
        model_type = _model_type(model)
        if model_type is None or task_kind not in OPTIMUM_TASKS:
            return False
        try:
            import optimum.exporters.onnx.model_configs  # noqa: F401  (fills the TasksManager registry)
            from optimum.exporters.tasks import TasksManager

            tasks = TasksManager.get_supported_tasks_for_model_type(
                model_type, exporter="onnx", library_name="transformers"
            )
        except Exception:
            return False
        return OPTIMUM_TASKS[task_kind] in tasks

    def export(self, model, preprocessor, task_kind: str, out_dir: Path) -> ExportedModel:
        from optimum.exporters.onnx import onnx_export_from_model

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.eval()
        try:
            onnx_export_from_model(
                model, out_dir, task=OPTIMUM_TASKS[task_kind], do_validation=False
            )
        except Exception as exc:
            raise JobFailed(
                f"optimum could not export this {type(model).__name__}: {type(exc).__name__}: {exc}"
            ) from exc
        _keep_only_onnx(out_dir)
        from importlib.metadata import version

        return ExportedModel(
            out_dir,
            task_kind,
            exporter="optimum",
            details={
                "optimum_task": OPTIMUM_TASKS[task_kind],
                "optimum_onnx": version("optimum-onnx"),
            },
        )


class _LogitsOnly:
    """Wraps a model so that its ONNX graph has named tensor inputs and one ``logits`` output."""

    def __new__(cls, model, names):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                out = self.model(**dict(zip(names, args)))
                return (
                    out.logits
                    if hasattr(out, "logits")
                    else (out[0] if isinstance(out, (tuple, list)) else out)
                )

        return Wrapper()


class TorchExporter:
    description = (
        "torch.onnx (any classifier taking input_ids/attention_mask or pixel_values; no KV cache)"
    )
    preference = 10

    def supports(self, model, task_kind: str) -> bool:
        try:
            import torch
        except ImportError:
            return False
        return isinstance(model, torch.nn.Module) and task_kind in kinds.CLASSIFICATION_KINDS

    def export(self, model, preprocessor, task_kind: str, out_dir: Path) -> ExportedModel:
        import inspect

        import torch

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.eval()
        if task_kind == kinds.IMAGE_CLASSIFICATION:
            from tunewright.edge.preprocessing import image_preprocessing

            size = image_preprocessing(preprocessor)[
                "size"
            ]  # what reaches the model, after any crop
            height, width = size["height"], size["width"]
            names = ["pixel_values"]
            args = (torch.zeros(1, 3, height, width),)
            axes = {"pixel_values": {0: "batch_size"}, "logits": {0: "batch_size"}}
        else:
            accepted = inspect.signature(model.forward).parameters
            names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
            args = tuple(torch.ones(1, 8, dtype=torch.long) for _ in names)
            axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
            axes["logits"] = {0: "batch_size"}
        wrapper = _LogitsOnly(model, names)
        try:
            with torch.inference_mode():
                torch.onnx.export(
                    wrapper,
                    args,
                    str(out_dir / "model.onnx"),
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes=axes,
                    opset_version=17,
                    dynamo=False,
                )
        except Exception as exc:
            raise JobFailed(
                f"torch.onnx could not export this {type(model).__name__}: {type(exc).__name__}: {exc}"
            ) from exc
        return ExportedModel(
            out_dir, task_kind, exporter="torch", details={"torch": torch.__version__, "opset": 17}
        )


GENAI_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "granite",
    "olmo",
    "smollm3",
}


class GenAIExporter:
    description = (
        "onnxruntime-genai model builder (causal LMs: Llama, Mistral, Qwen, Phi, Gemma...)"
    )
    preference = 30

    def supports(self, model, task_kind: str) -> bool:
        if task_kind != kinds.CAUSAL_LM or _model_type(model) not in GENAI_TYPES:
            return False
        try:
            import onnxruntime_genai.models.builder  # noqa: F401
        except Exception:
            return False
        return True

    def export(
        self, model, preprocessor, task_kind: str, out_dir: Path, *, adapter_path=None
    ) -> ExportedModel:
        """Build ``model`` with the genai model builder. ``adapter_path``: a PEFT LoRA folder trained
        on ``model`` (unmerged); the builder then adds a ``lora_A -> lora_B`` MatMul pair beside
        each adapted MatMul, with the adapter's weights as initializers (what a multi-adapter
        bundle makes overridable, :mod:`tunewright.edge.multi`)."""
        from importlib.metadata import version

        from onnxruntime_genai.models.builder import create_model

        out_dir = Path(out_dir)
        extra = {"adapter_path": str(adapter_path)} if adapter_path is not None else {}
        with tempfile.TemporaryDirectory(prefix="hf-", dir=out_dir.parent) as tmp:
            hf = Path(tmp) / "hf"
            model.save_pretrained(hf, safe_serialization=True)
            preprocessor.save_pretrained(hf)
            try:
                create_model(
                    _model_type(model),
                    str(hf),
                    str(out_dir),
                    "fp32",
                    "cpu",
                    str(Path(tmp) / "cache"),
                    hf_token="false",
                    hf_remote="false",
                    **extra,
                )
            except Exception as exc:
                raise JobFailed(
                    f"the onnxruntime-genai model builder could not export this "
                    f"{type(model).__name__}: {type(exc).__name__}: {exc}"
                ) from exc
        # the bundle carries its own tokenizer.json; genai needs its config and may use the rest
        config = json.loads((out_dir / "genai_config.json").read_text())
        eos = getattr(preprocessor, "eos_token_id", None)
        if eos is not None:
            config["model"]["eos_token_id"] = int(eos)
            config["model"]["pad_token_id"] = int(
                preprocessor.pad_token_id if preprocessor.pad_token_id is not None else eos
            )
        (out_dir / "genai_config.json").write_text(json.dumps(config, indent=4))
        for name in ("tokenizer.json",):
            if (out_dir / name).exists():
                (out_dir / name).unlink()  # written again by the bundle from the tuned tokenizer
        return ExportedModel(
            out_dir,
            task_kind,
            runtime="onnxruntime-genai",
            exporter="genai",
            details={"onnxruntime_genai": version("onnxruntime-genai"), "precision": "fp32"},
        )


@hookimpl(trylast=True)
def register_exporters(register):
    register("genai", GenAIExporter())
    register("optimum", OptimumExporter())
    register("torch", TorchExporter())
