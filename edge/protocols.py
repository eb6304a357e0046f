"""What an exporter and a quantizer plugin provide (``register_exporters``, ``register_quantizers``).

::

    tuned model ──Exporter.export──► ExportedModel (fp32 ONNX) ──Quantizer.quantize──► ExportedModel
                                                                  ──parity gate──► bundle

Both work on :class:`ExportedModel`, a folder holding exactly the model files a bundle ships (the
``.onnx`` file, its external data, an onnxruntime-genai config...). The bundle writer adds the
tokenizer or image settings, labels, parity examples and the manifest.

A model that exports to several files that run together (an image+text model: vision part,
decoder, embedding table; later a base model and several adapters) is one :class:`ExportedModel`
whose ``parts`` are the models a quantizer rewrites one by one::

    ExportedModel(folder=<vision.onnx, embeddings.npy>, model_entries={"vision_file": ...},
                  parts={"decoder": ExportedModel(folder=<model.onnx, model.onnx.data>, task_kind="causal_lm")})

Each quantizer rewrites the parts it supports; the exporter's optional ``assemble`` (see
:class:`ExporterOptions`) then rewrites what depends on them. The bundle holds the files of
``folder`` and of every part side by side, and the one parity gate proves the whole against the
tuned model, as it proves a one-file model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: an ONNX model whose weights are over this many bytes keeps them in ``<file>.data`` beside it.
#: onnxruntime memory-maps such a file where one file would be read whole into the protobuf, then
#: copied into its tensors: on the int8 SmolLM2-135M bundle, loading peaked at 350 MB in one file
#: and 270 MB with its weights beside it (``research/serving.md``; the bench's figures)
EXTERNAL_DATA_BYTES = 16 * 1024 * 1024


def save_onnx(model: Any, path: Path) -> None:
    """Save the ONNX ``model`` at ``path``: its weights in ``<name>.data`` beside it when they are
    over :data:`EXTERNAL_DATA_BYTES`, in the one file otherwise. A stale ``.data`` file of an
    earlier save is removed first (onnx appends to it)."""
    import shutil

    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    for stale in (data, path):
        if stale.exists():
            stale.unlink()
    if model.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        shutil.copymode(path, data)  # onnx creates it owner-only; the bundle is read by others
    else:
        onnx.save_model(model, str(path))


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
    #: entries of the manifest's ``model`` section beside ``file`` and its inputs and outputs: the
    #: other files the runtime opens, by role, and how they are stored (``{"vision_file":
    #: "vision.onnx", "embeddings_file": "embeddings.npy", "embeddings_dtype": "float32"}``)
    model_entries: dict[str, Any] = field(default_factory=dict)
    #: models of their own among the bundle's files, by role, each in its own folder: what
    #: quantizers rewrite one at a time (``{"decoder": ...}``); empty for a one-model export.
    #: ``model_file`` may be a part's file: the bundle lays every file out side by side.
    parts: dict[str, ExportedModel] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.model_file

    def files(self) -> list[str]:
        """The files of ``folder`` (not of ``parts``), relative to it."""
        return sorted(
            p.relative_to(self.folder).as_posix()
            for p in Path(self.folder).rglob("*")
            if p.is_file()
        )

    def layout(self) -> dict[str, Path]:
        """Every file of the bundle's model, ``folder``'s and each part's, by its name in the bundle.
        Raises ``ValueError`` when two of them would have the same name."""
        out: dict[str, Path] = {}
        for model in (self, *self.parts.values()):
            for name in model.files():
                if name in out:
                    raise ValueError(f"two exported files would be {name!r} in the bundle")
                out[name] = Path(model.folder) / name
        return out

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.layout().values())

    def moved(self, folder: Path, **changes) -> ExportedModel:
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

    # Optional members: :class:`ExporterOptions`.


class ExporterOptions(Protocol):
    """Members an :class:`Exporter` may have; :func:`tunewright.edge.export_bundle` looks each up
    and does without it. None is needed for a model that exports to one file."""

    #: how many held-out examples the gate scores, continues for fidelity and how many tokens it
    #: continues each (``{"max_examples": 64, "fidelity_examples": 4, "new_tokens": 16}``), where
    #: this exporter's models are slower to run than ``export_bundle``'s defaults assume; the
    #: caller's explicit figures win
    reference_limits: dict[str, int]

    def preprocessing(
        self, model: Any, preprocessor: Any, folder: Path, *, max_length: int, config: Any = None
    ) -> dict[str, Any]:
        """Write what the runtime needs to turn raw input into model input into ``folder``
        (``tokenizer.json``...) and return the manifest's ``preprocessing`` section. Without it:
        :func:`tunewright.edge.preprocessing.write_preprocessing` of ``preprocessor``."""

    def assemble(self, candidate: ExportedModel, out_dir: Path) -> ExportedModel:
        """Called after a quantizer rewrote some of ``candidate.parts`` (``candidate.quantization``
        says how, with ``applies_to`` naming the parts): rewrite the files that go with them into
        the empty folder ``out_dir`` and return the candidate with its ``folder``,
        ``model_entries`` and ``quantization`` updated (an image+text model stores its embedding
        table in int8 beside a quantized decoder, and lists it in ``quantization.embedding_tables``)."""

    def export_bundle(
        self,
        model: Any,
        preprocessor: Any,
        task: Any,
        examples: list[dict],
        out: Path,
        **options: Any,
    ) -> Any:
        """Deprecated: an exporter that carried the whole path itself. ``export_bundle`` still hands
        it over (with a ``DeprecationWarning``); export several files as ``parts`` instead."""


@runtime_checkable
class Quantizer(Protocol):
    """Rewrites an exported model into a smaller or faster one.

    ``auto_candidate``: whether ``--quantize auto`` tries it (it keeps the fastest candidate that
    passes the parity gate). Optional members: :class:`QuantizerOptions`.

    An export with ``parts`` is quantized part by part: ``supports`` and ``quantize`` see each part
    as a model of its own (a decoder part as a causal LM), with no calibration examples (a part's
    inputs are not the task's).
    """

    description: str
    auto_candidate: bool

    def supports(self, exported: ExportedModel) -> bool:
        """Whether this quantizer applies to ``exported`` (its runtime, task kind, ops)."""

    def quantize(
        self, exported: ExportedModel, out_dir: Path, calibration: list[dict[str, Any]]
    ) -> ExportedModel:
        """Write the quantized model files into the empty folder ``out_dir``; return them with
        ``quantization`` set. ``calibration`` holds model inputs (name -> numpy array) built from the
        run's held-out examples, for quantizers that calibrate activations."""


class QuantizerOptions(Protocol):
    """Members a :class:`Quantizer` may have; :func:`tunewright.edge.export_bundle` looks each up."""

    def refusal(self, exported: ExportedModel) -> str | None:
        """The reason (naming what applies instead) that ``--quantize`` shows when ``supports`` is
        False for ``exported``; ``None`` when it applies."""
