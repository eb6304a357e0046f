"""What every edge predictor provides: the one protocol the runtime, ``bench``, ``verify`` and the
parity gate talk to.

A predictor opens one bundle's model on one runtime (onnxruntime, onnxruntime-genai...) for one
task kind. The code around it never asks which kind it is: it asks the predictor.

::

    predictor = PredictorClass(folder, manifest, threads=None)
    predictor.logits(inputs)                      # one forward pass: the parity gate and verify
    predictor.teacher_forced_logits(prompt, ids)  # generators: fidelity along a continuation
    predictor.benchmark_inputs(batch=1, tokens=16)   # what ``bench`` times
    predictor.stream(inputs, max_new_tokens=64)      # generators: token ids, one at a time
    predictor.run(["a text", ...])                # what ``edge run`` prints

Inputs are always model inputs by name, as numpy arrays with the batch first (``input_ids``
``(B, T)``, ``attention_mask`` ``(B, T)``, ``pixel_values`` ``(B, C, H, W)``...): the names the
task's ``collate`` produces. A predictor ignores names its model does not take (``labels``) and
fills the ones it can default (``token_type_ids`` zeros, ``attention_mask`` ones).

A plugin brings a runtime for a new kind with the ``register_edge_runtimes`` hook::

    @hookimpl
    def register_edge_runtimes(register):
        register("my-captioner", Captioner)   # Captioner.runtime, Captioner.task_kind say what it runs

This module imports neither torch nor transformers, and neither may a predictor module: it runs on
devices that have only ``tunewright[runtime]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

#: model inputs by name, numpy arrays with the batch first
Inputs = Mapping[str, np.ndarray]


@runtime_checkable
class Predictor(Protocol):
    """A bundle's model, ready to run. Registered as a class (``register_edge_runtimes``).

    Class attributes say which bundles it opens: the manifest's ``runtime`` and ``task_kind``.
    ``generates`` says whether it produces token sequences (then ``teacher_forced_logits`` and
    ``stream`` work) or one prediction per input (classifiers).
    """

    runtime: ClassVar[str]
    task_kind: ClassVar[str]
    generates: ClassVar[bool]

    #: the bundle's manifest as read from ``manifest.json``
    manifest: dict[str, Any]
    #: label names, index order (classifiers); ``None`` otherwise
    labels: list[str] | None

    def __init__(
        self, folder: Path, manifest: dict[str, Any], *, threads: int | None = None
    ) -> None:
        """Open the model files of the bundle in ``folder`` (already checked against ``manifest``).
        ``threads``: intra-op threads, ``None`` for the runtime's default (one per core)."""

    def logits(self, inputs: Inputs) -> np.ndarray:
        """One forward pass, no cache. Returns ``(B, C)`` for a classifier, ``(B, T, V)`` for a
        generator (the logits at every position of ``input_ids``: position t predicts t + 1)."""

    def teacher_forced_logits(
        self, prompt: Inputs | Sequence[int], continuation: Sequence[int]
    ) -> np.ndarray:
        """Generators: ``(len(continuation), V)`` logits predicting each token of ``continuation``
        after ``prompt`` (model inputs of batch 1, or plain token ids), fed one token at a time
        through the cache exactly as generation feeds them. Classifiers raise ``NotImplementedError``."""

    def benchmark_inputs(self, *, batch: int = 1, tokens: int = 16) -> dict[str, np.ndarray]:
        """Model inputs of a typical request, for ``bench``: ``batch`` rows of ``tokens`` tokens of
        ordinary text (a text classifier), an image (an image classifier), or a prompt of ``tokens``
        tokens (a generator, ``batch`` 1)."""

    def stream(
        self,
        inputs: Inputs,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> Iterator[int]:
        """Generators: the token ids generated after ``inputs`` (batch 1), one at a time; greedy at
        ``temperature`` 0. Classifiers raise ``NotImplementedError``."""

    def run(self, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        """What ``edge run`` prints, one JSON-ready result per raw input (a text, an image path, a
        prompt). Generators take ``max_new_tokens``, ``temperature``, ``seed`` and ``raw`` (the
        prompt as is, without the chat format); classifiers ignore options."""


class PredictorOptions(Protocol):
    """Members a :class:`Predictor` may have; the parity gate, ``bench`` and ``run`` look each up
    and do without it."""

    #: ``True``: :meth:`Predictor.logits` takes a right-padded batch whole, as the task collates it
    #: (inputs that are not one row per example, such as the ``pixel_values`` of every view of
    #: every example in order, included) and returns ``(B, T, V)`` with the padding's rows its own
    #: business. Without it (or ``False``) the parity gate runs each row alone over its unpadded
    #: positions, cutting every input along its first axis.
    whole_batches: ClassVar[bool]

    def benchmark_inputs(
        self, *, batch: int = 1, tokens: int = 16, images: Sequence[Any] = ()
    ) -> dict[str, np.ndarray]:
        """A predictor that takes images beside its inputs names ``images`` (paths, data URLs or
        PIL images): ``bench --image`` shows them to it. Without the parameter ``--image`` is refused."""

    def run(
        self, inputs: Sequence[str], *, images: Sequence[Any] = (), **options: Any
    ) -> list[dict[str, Any]]:
        """Likewise for ``edge run --image``."""

    #: the names of the adapters a bundle of several LoRA runs carries (``tunewright export RUN_A
    #: RUN_B ...``); the server lists each as a model of its own. Without it: none.
    adapter_names: list[str]

    def for_adapter(self, adapter: str | None) -> Any:
        """The predictor with one of :attr:`adapter_names` active on every call (``None``: the base
        model), for the parity gate and ``verify``."""

    def labels_for(self, adapter: str | None) -> list[str] | None:
        """A classifier's label names with ``adapter`` active (each run of a multi-adapter bundle
        keeps its own). Without it: ``labels``."""

    def generate_ids_batch(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int],
        **options: Any,
    ) -> Any:
        """A generator's several prompts decoded together: per step, one entry per row (its next
        token id, or ``None`` once the row has ended). ``edge serve`` batches concurrent requests
        through it, asking ``can_batch(prompt_ids)`` of each first. Without it: one request per
        generation."""

    def can_batch(self, prompt_ids: Sequence[int]) -> bool:
        """Whether ``prompt_ids`` may be a row of :meth:`generate_ids_batch`."""


__all__ = ["Predictor", "PredictorOptions", "Inputs"]
