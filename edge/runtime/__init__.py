"""Run a tunewright bundle with onnxruntime alone: no torch, no transformers.

::

    from tunewright.edge.runtime import load_bundle
    model = load_bundle("bundle/")            # checks the format version and every file's sha256
    model.predict(["great film"])             # classification: [{"label": "pos", "score": 0.97, ...}]
    model.generate([{"role": "user", "content": "hi"}], max_new_tokens=32)   # generation

Every bundle opens as a :class:`Predictor` (see :mod:`tunewright.edge.runtime.protocol`): the
predictor registered (``register_edge_runtimes``) for the manifest's runtime and task kind.

Installable on its own: ``pip install tunewright[runtime]`` needs onnxruntime, numpy, tokenizers,
pillow (and onnxruntime-genai for bundles made by its model builder). ``python -m
tunewright.edge.runtime run|bench|verify BUNDLE`` is the command line where the full ``tunewright``
CLI is not installed.
"""

from __future__ import annotations

from .bench import bench_bundle, bench_predictor, peak_memory_mb
from .bundle import (
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    check_files,
    open_bundle,
    read_manifest,
    sha256_file,
)
from .predictors import (
    GenAIGenerator,
    Generator,
    ImageClassifier,
    OnnxPredictor,
    TextClassifier,
    make_session,
)
from .protocol import Inputs, Predictor, PredictorOptions
from .registry import builtin_predictors, find_predictor, load_bundle, predictor_for
from .verify import verify_bundle

__all__ = [
    "load_bundle",
    "verify_bundle",
    "bench_bundle",
    "bench_predictor",
    "peak_memory_mb",
    "open_bundle",
    "read_manifest",
    "check_files",
    "sha256_file",
    "BundleError",
    "FORMAT_VERSION",
    "MANIFEST",
    "Predictor",
    "PredictorOptions",
    "Inputs",
    "find_predictor",
    "builtin_predictors",
    "predictor_for",
    "make_session",
    "OnnxPredictor",
    "TextClassifier",
    "ImageClassifier",
    "Generator",
    "GenAIGenerator",
]
