"""Built-in edge runtimes: the predictors that open the bundles the built-in exporters make.

==================  =================  =======================  ================================
name                runtime            task kind                what
==================  =================  =======================  ================================
text-classifier     onnxruntime        sequence_classification  tokenizers + one session
image-classifier    onnxruntime        image_classification     pillow + numpy preprocessing
generator           onnxruntime        causal_lm                greedy/sampled, KV cache in numpy
genai-generator     onnxruntime-genai  causal_lm                onnxruntime-genai's search loop
==================  =================  =======================  ================================

Imports only :mod:`tunewright.edge.runtime` (no torch), so it loads on a device that has
``tunewright[runtime]`` alone.
"""

from __future__ import annotations

from tunewright import hookimpl
from tunewright.edge.runtime import builtin_predictors


@hookimpl(trylast=True)
def register_edge_runtimes(register):
    for name, predictor in builtin_predictors().items():
        register(name, predictor)
