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

from pathlib import Path
from typing import Any

from .bench import bench_bundle, bench_predictor, peak_memory_mb
from .bundle import FORMAT_VERSION, MANIFEST, BundleError, check_files, open_bundle, read_manifest, sha256_file
from .predictors import (GenAIGenerator, Generator, ImageClassifier, OnnxPredictor, TextClassifier, make_session)
from .protocol import Inputs, Predictor
from .registry import builtin_predictors, find_predictor, predictor_for
from .verify import verify_bundle


def load_bundle(folder: str | Path, *, verify: bool = True, threads: int | None = None, pm: Any = None) -> Predictor:
    """Open a bundle and return its predictor. Raises :class:`BundleError` for a changed bundle,
    one of a newer format, or one whose runtime and task kind no registered predictor serves.
    ``pm``: the plugin manager whose ``edge_runtimes`` decide (default: the installed plugins)."""
    manifest = open_bundle(folder, verify=verify)
    return predictor_for(Path(folder), manifest, threads=threads, pm=pm)


__all__ = [
    "load_bundle", "verify_bundle", "bench_bundle", "bench_predictor", "peak_memory_mb", "open_bundle",
    "read_manifest", "check_files", "sha256_file", "BundleError", "FORMAT_VERSION", "MANIFEST",
    "Predictor", "Inputs", "find_predictor", "builtin_predictors", "predictor_for", "make_session", "OnnxPredictor",
    "TextClassifier", "ImageClassifier", "Generator", "GenAIGenerator",
]
