"""Edge export: tuned model -> ONNX -> quantized -> proven against the tuned model -> bundle.

Plugin authors implement :class:`Exporter` (``register_exporters``) and :class:`Quantizer`
(``register_quantizers``); both work on :class:`ExportedModel`. ``export_bundle`` runs the whole
path for a model in memory and ``export_run`` for a run directory. The bundle runs on a device
through :mod:`tunewright.edge.runtime` (one :class:`Predictor` per runtime and task kind,
registered with ``register_edge_runtimes``), which imports neither torch nor transformers (nor does this
module at import time).
"""

from .export import (
    AUTO,
    ExportResult,
    bundle_folder,
    check_out,
    export_bundle,
    export_run,
    write_manifest,
)
from .parity import DEFAULT_THRESHOLD, ParityReport, measure_parity
from .preprocessing import chat_format
from .protocols import ExportedModel, Exporter, ExporterOptions, Quantizer, QuantizerOptions
from .runtime.bundle import FORMAT_VERSION, BundleError
from .runtime.protocol import Inputs, Predictor, PredictorOptions

__all__ = [
    "Exporter",
    "ExporterOptions",
    "Quantizer",
    "QuantizerOptions",
    "ExportedModel",
    "export_bundle",
    "export_run",
    "ExportResult",
    "AUTO",
    "check_out",
    "bundle_folder",
    "write_manifest",
    "measure_parity",
    "ParityReport",
    "DEFAULT_THRESHOLD",
    "chat_format",
    "FORMAT_VERSION",
    "BundleError",
    "Predictor",
    "PredictorOptions",
    "Inputs",
]
