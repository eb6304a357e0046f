"""What an exporter and a quantizer plugin provide (``register_exporters``, ``register_quantizers``).

::

    tuned model ──Exporter.export──► ExportedModel (fp32 ONNX) ──Quantizer.quantize──► ExportedModel
                                                                  ──parity gate──► bundle

Both work on :class:`ExportedModel`, a folder holding exactly the model files a bundle ships (the
``.onnx`` file, its external data, an onnxruntime-genai config...). The bundle writer adds the
tokenizer or image settings, labels, parity examples and the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

@dataclass
class ExportedModel:
    """Model files in ``folder``, ready to run on ``runtime`` ("onnxruntime", "onnxruntime-genai"
    or a plugin's) for ``task_kind``: the bundle's manifest records both, and the edge runtime
    registered for that pair (``register_edge_runtimes``) opens it. ``model_file`` is the ONNX file
    the runtime opens, relative to ``folder``."""

    folder: Path
    task_kind: str
    runtime: str = "onnxruntime"
    model_file: str = "model.onnx"
    exporter: str = ""
    #: ``{"name": "int8", ...settings}``; ``{"name": "none"}`` straight from an exporter
    quantization: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    #: anything the exporter wants recorded in the manifest (opset, tool versions...)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.model_file

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in Path(self.folder).rglob("*") if p.is_file())

    def size_bytes(self) -> int:
        return sum((Path(self.folder) / name).stat().st_size for name in self.files())

    def moved(self, folder: Path, **changes) -> "ExportedModel":
        return replace(self, folder=Path(folder), **changes)


@runtime_checkable
class Exporter(Protocol):
    """Turns a tuned (merged, fp32, eval-mode) model into ONNX files.

    ``preference``: ``--exporter auto`` uses the supporting exporter with the highest preference.
    """

    description: str
    preference: int

    def supports(self, model: Any, task_kind: str) -> bool:
        """Whether this exporter can export ``model`` (a ``torch.nn.Module``) for ``task_kind``."""

    def export(self, model: Any, preprocessor: Any, task_kind: str, out_dir: Path) -> ExportedModel:
        """Write the model files into the empty folder ``out_dir`` and describe them.

        ``preprocessor`` is the tokenizer (text) or image processor (images); an exporter that
        needs a Hugging Face folder (onnxruntime-genai's builder) saves model and preprocessor there.
        Raise :class:`tunewright.JobFailed` with the reason when the export itself fails.
        """

    # Optional: an exporter whose bundle is more than one model file that the generic path lays
    # out (an image+text model: vision part, decoder, embedding table) may carry the whole path:
    # ``export_bundle(model, preprocessor, task, examples, out, *, quantize, threshold, info, pm,
    # bench, overwrite, config, log, **options) -> ExportResult``. tunewright.edge.export_bundle
    # hands it over when the exporter has one; it must keep the same promises: --out checked with
    # tunewright.edge.check_out, the parity gate on the task's metric, the bundle written through
    # tunewright.edge.bundle_folder (atomic; an old bundle replaced only with overwrite).


@runtime_checkable
class Quantizer(Protocol):
    """Rewrites an exported model into a smaller or faster one.

    ``auto_candidate``: whether ``--quantize auto`` tries it (it keeps the fastest candidate that
    passes the parity gate). Optional: ``refusal(exported) -> str | None``, the reason (naming what
    applies instead) that ``--quantize`` shows when ``supports`` is False.
    """

    description: str
    auto_candidate: bool

    def supports(self, exported: ExportedModel) -> bool:
        """Whether this quantizer applies to ``exported`` (its runtime, task kind, ops)."""

    def quantize(self, exported: ExportedModel, out_dir: Path, calibration: list[dict[str, Any]]) -> ExportedModel:
        """Write the quantized model files into the empty folder ``out_dir``; return them with
        ``quantization`` set. ``calibration`` holds model inputs (name -> numpy array) built from the
        run's held-out examples, for quantizers that calibrate activations."""
