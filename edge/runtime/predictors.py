"""Predictors over a bundle's ONNX model: text and image classification, and generation with the
KV cache kept in numpy (or handed to onnxruntime-genai for bundles made by its model builder).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .bundle import BundleError
from .images import pixel_values
from .text import TextCodec


def make_session(path: Path, *, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def describe_logits(row: np.ndarray, labels: list[str] | None) -> dict[str, Any]:
    probs = softmax(row.astype(np.float64))
    best = int(np.argmax(row))
    names = labels or [str(i) for i in range(len(row))]
    return {"label": names[best], "index": best, "score": float(probs[best]),
            "scores": {names[i]: float(p) for i, p in enumerate(probs)}}


class _OnnxPredictor:
    def __init__(self, folder: Path, manifest: dict, *, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        model = manifest["model"]
        self.session = make_session(self.folder / model["file"], threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.labels = manifest.get("labels")


class TextClassifier(_OnnxPredictor):
    """``predict(["a text", ...])`` -> one ``{"label", "score", "scores"}`` per text."""

    def __init__(self, folder: Path, manifest: dict, **kwargs):
        super().__init__(folder, manifest, **kwargs)
        self.codec = TextCodec(self.folder, manifest["preprocessing"])

    def feeds(self, ids_list: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Right-padded batch inputs for the model from token ids."""
        width = max(len(ids) for ids in ids_list)
        input_ids = np.full((len(ids_list), width), self.codec.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids_list), width), dtype=np.int64)
        for row, ids in enumerate(ids_list):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask,
                 "token_type_ids": np.zeros_like(input_ids)}
        return {name: feeds[name] for name in self.input_names}

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feeds)[0]

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        if isinstance(texts, str):
            texts = [texts]
        logits = self.logits(self.feeds([self.codec.encode(text) for text in texts]))
        return [describe_logits(row, self.labels) for row in logits]


class ImageClassifier(_OnnxPredictor):
    """``predict([path_or_PIL_image, ...])``: turns images upright, resizes, crops, rescales and
    normalises as the tuned model's image processor did (the settings are in the manifest), with
    pillow and numpy (:mod:`tunewright.edge.runtime.images`)."""

    def __init__(self, folder: Path, manifest: dict, **kwargs):
        super().__init__(folder, manifest, **kwargs)
        self.pre = manifest["preprocessing"]
        self.input_name = self.input_names[0]

    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        """(N, 3, H, W) model input: the tuned model's image processor, as the manifest records it."""
        return pixel_values(images, self.pre)

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feeds)[0]

    def predict(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        logits = self.logits({self.input_name: self.pixel_values(images)})
        return [describe_logits(row, self.labels) for row in logits]


class Generator(_OnnxPredictor):
    """Greedy or sampled generation from a decoder exported with its KV cache.

    The cache lives in numpy between steps: ``past_key_values.N.key/value`` go in,
    ``present.N.key/value`` come out and are fed back. Works for optimum's decoder exports and for
    onnxruntime-genai model-builder files alike (the latter take no ``position_ids``).
    """

    def __init__(self, folder: Path, manifest: dict, **kwargs):
        super().__init__(folder, manifest, **kwargs)
        self.codec = TextCodec(self.folder, manifest["preprocessing"])
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values")]
        self.present_names = [name.replace("past_key_values", "present") for name in
                              (i.name for i in self.past_inputs)]
        self.uses_position_ids = "position_ids" in self.input_names
        self.eos_token_ids = set(self.codec.eos_token_ids)

    def empty_past(self, batch: int = 1) -> dict[str, np.ndarray]:
        past = {}
        for meta in self.past_inputs:
            _, heads, _, head_dim = meta.shape
            dtype = np.float16 if "float16" in meta.type else np.float32
            past[meta.name] = np.zeros((batch, int(heads), 0, int(head_dim)), dtype=dtype)
        return past

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray], past_length: int):
        """Run new tokens ``ids`` (1, T) after ``past_length`` cached ones; return (logits, past)."""
        total = past_length + ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64),
                 "attention_mask": np.ones((ids.shape[0], total), dtype=np.int64), **past}
        if self.uses_position_ids:
            feeds["position_ids"] = np.arange(past_length, total, dtype=np.int64)[None, :].repeat(ids.shape[0], 0)
        outputs = self.session.run(["logits", *self.present_names], feeds)
        new_past = {meta.name: value for meta, value in zip(self.past_inputs, outputs[1:])}
        return outputs[0], new_past

    def teacher_forced_logits(self, prompt_ids: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Logits predicting each token of ``continuation`` (len(continuation), V), fed one token at a
        time through the cache exactly as generation does."""
        logits, past = self.step(np.asarray([prompt_ids]), self.empty_past(), 0)
        rows = [logits[0, -1]]
        length = len(prompt_ids)
        for token in list(continuation)[:-1]:
            logits, past = self.step(np.asarray([[token]]), past, length)
            length += 1
            rows.append(logits[0, -1])
        return np.stack(rows).astype(np.float32)

    def generate_ids(self, prompt_ids: Sequence[int], *, max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     stop_at_eos: bool = True) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        logits, past = self.step(np.asarray([list(prompt_ids)]), self.empty_past(), 0)
        length = len(prompt_ids)
        for _ in range(max_new_tokens):
            token = _pick(logits[0, -1], temperature, top_k, top_p, rng)
            if stop_at_eos and token in self.eos_token_ids:
                return
            yield token
            logits, past = self.step(np.asarray([[token]]), past, length)
            length += 1

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, str):
            return self.codec.encode(prompt, add_special_tokens=False, truncate=False)
        return self.codec.encode(self.codec.render_chat(prompt), add_special_tokens=False, truncate=False)

    def generate(self, prompt: str | list[dict[str, str]], **options) -> str:
        """Generate a reply to a raw prompt or to chat messages (``[{"role", "content"}...]``)."""
        return self.codec.decode(list(self.generate_ids(self.prompt_ids(prompt), **options)))


def _pick(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64) / temperature
    if top_k:
        cutoff = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < cutoff, -np.inf, logits)
    probs = softmax(logits)
    if top_p < 1.0:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


class GenAIGenerator:
    """Generation through onnxruntime-genai for bundles made by its model builder.

    Prompts are tokenized by the bundle's ``tokenizer.json`` (the same ids as the tuned model's
    tokenizer); onnxruntime-genai runs the search loop and keeps the cache. ``teacher_forced_logits``
    uses the numpy loop over the same ONNX file, so parity is measured on exactly these weights.
    """

    def __init__(self, folder: Path, manifest: dict, *, threads: int | None = None):
        import onnxruntime_genai as og

        self.folder = Path(folder)
        self.manifest = manifest
        self.labels = None
        self.codec = TextCodec(self.folder, manifest["preprocessing"])
        self.eos_token_ids = set(self.codec.eos_token_ids)
        self._og = og
        self.model = og.Model(str(self.folder))
        self._numpy: Generator | None = None
        self._threads = threads

    @property
    def numpy_generator(self) -> Generator:
        if self._numpy is None:
            self._numpy = Generator(self.folder, self.manifest, threads=self._threads)
        return self._numpy

    def teacher_forced_logits(self, prompt_ids, continuation) -> np.ndarray:
        return self.numpy_generator.teacher_forced_logits(prompt_ids, continuation)

    prompt_ids = Generator.prompt_ids

    def generate_ids(self, prompt_ids: Sequence[int], *, max_new_tokens: int = 64, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     stop_at_eos: bool = True) -> Iterator[int]:
        og = self._og
        params = og.GeneratorParams(self.model)
        options: dict[str, Any] = {"max_length": len(prompt_ids) + max_new_tokens}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=top_p)
            if top_k:
                options["top_k"] = top_k
        else:
            options["do_sample"] = False
        if not stop_at_eos:
            options["min_length"] = len(prompt_ids) + max_new_tokens
        params.set_search_options(**options)
        if seed is not None:
            params.set_search_options(random_seed=seed)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray([list(prompt_ids)], dtype=np.int32))
        produced = 0
        while not generator.is_done() and produced < max_new_tokens:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if stop_at_eos and token in self.eos_token_ids:
                return
            produced += 1
            yield token

    def generate(self, prompt, **options) -> str:
        return self.codec.decode(list(self.generate_ids(self.prompt_ids(prompt), **options)))


PREDICTORS = {
    ("onnxruntime", "sequence_classification"): TextClassifier,
    ("onnxruntime", "image_classification"): ImageClassifier,
    ("onnxruntime", "causal_lm"): Generator,
    ("onnxruntime-genai", "causal_lm"): GenAIGenerator,
}


def predictor_for(folder: Path, manifest: dict, *, threads: int | None = None):
    key = (manifest.get("runtime"), manifest.get("task_kind"))
    if key == ("onnxruntime", "image_text_to_text"):
        from .image_text import ImageTextGenerator  # imports this module: looked up late

        return ImageTextGenerator(folder, manifest, threads=threads)
    cls = PREDICTORS.get(key)
    if cls is None:
        known = ", ".join(f"{r}/{k}" for r, k in PREDICTORS)
        raise BundleError(f"{folder}: runtime {key[0]!r} with task kind {key[1]!r} is not one this "
                          f"runtime knows ({known})")
    return cls(folder, manifest, threads=threads)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
