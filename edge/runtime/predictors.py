"""The built-in predictors (:class:`~tunewright.edge.runtime.Predictor`): text and image
classification, and generation with the KV cache kept in numpy (or handed to onnxruntime-genai for
bundles made by its model builder).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tunewright import kinds

from .bundle import BundleError
from .images import check_views, pixel_values
from .protocol import Inputs
from .text import TextCodec

SAMPLE_TEXT = (
    "the quick brown fox jumps over the lazy dog while the band plays a slow song "
    "about rivers, mountains and the long road home "
) * 8


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads of one core counted once): what
    onnxruntime's sessions use by default. Linux's CPU topology; the logical count elsewhere."""
    import os

    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            cores.add(
                Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
                .read_text()
                .strip()
            )
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def make_session(path: Path, *, threads: int | None = None):
    """An onnxruntime CPU session with every graph optimisation on; ``threads`` intra-op threads
    (``None``: onnxruntime's default, one per physical core)."""
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
    """``{"label", "index", "score", "scores"}`` of one classifier output row."""
    probs = softmax(row.astype(np.float64))
    best = int(np.argmax(row))
    names = labels or [str(i) for i in range(len(row))]
    return {
        "label": names[best],
        "index": best,
        "score": float(probs[best]),
        "scores": {names[i]: float(p) for i, p in enumerate(probs)},
    }


def bundle_adapters(folder: Path, manifest: dict) -> dict[str, Path]:
    """``{name: path}`` of the LoRA adapters a multi-adapter bundle carries (``manifest["adapters"]``,
    written by ``tunewright export RUN_A RUN_B ...``); empty for a bundle of one model."""
    return {
        name: Path(folder) / entry["file"]
        for name, entry in sorted((manifest.get("adapters") or {}).items())
    }


def check_adapter(adapter: str | None, known: Mapping[str, Any]) -> None:
    """Raise :class:`BundleError` for an adapter the bundle does not carry (``None``: the base)."""
    if adapter is None or adapter in known:
        return
    raise BundleError(
        f"unknown adapter {adapter!r}; this bundle carries "
        + (", ".join(sorted(known)) if known else "none (it holds one model)")
        + " (or adapter=None for the base model)"
    )


def as_prompt_inputs(prompt: Inputs | Sequence[int]) -> dict[str, np.ndarray]:
    """Model inputs of batch 1 from either model inputs or plain token ids."""
    if isinstance(prompt, Mapping):
        return {name: np.asarray(value) for name, value in prompt.items()}
    return {"input_ids": np.asarray([list(prompt)], dtype=np.int64)}


class _Adapters:
    """A bundle's adapters (``tunewright export RUN_A RUN_B ...``), for every predictor."""

    #: ``{name: .onnx_adapter file}`` of a bundle of several LoRA runs (empty: one model)
    adapter_files: dict[str, Path]

    @property
    def adapter_names(self) -> list[str]:
        """The adapters this bundle carries; empty for one model."""
        return sorted(self.adapter_files)

    def for_adapter(self, adapter: str | None) -> AdapterView:
        """This predictor with ``adapter`` active in every call: what the parity gate and ``verify``
        judge one adapter through."""
        check_adapter(adapter, self.adapter_files)
        return AdapterView(self, adapter)


class OnnxPredictor(_Adapters):
    """Shared by the built-in predictors: one onnxruntime session over the manifest's model file.

    Plugin predictors may subclass it; nothing in the protocol requires it.
    """

    runtime: ClassVar[str] = "onnxruntime"
    task_kind: ClassVar[str] = ""
    generates: ClassVar[bool] = False

    def __init__(self, folder: Path, manifest: dict, *, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        self.session = make_session(self.folder / manifest["model"]["file"], threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.logits_name = "logits" if "logits" in self.output_names else self.output_names[0]
        self.labels = manifest.get("labels")
        self.adapter_files = bundle_adapters(self.folder, manifest)
        self._run_options: dict[str, Any] = {}

    def run_options(self, adapter: str | None):
        """onnxruntime ``RunOptions`` with ``adapter`` active (its weights fed as the graph's
        overridable initializers), ``None`` for the base model."""
        check_adapter(adapter, self.adapter_files)
        if adapter is None:
            return None
        if adapter not in self._run_options:
            import onnxruntime as ort

            lora = ort.LoraAdapter()
            lora.Load(str(self.adapter_files[adapter]))
            options = ort.RunOptions()
            options.add_active_adapter(lora)
            self._run_options[adapter] = (options, lora)  # the adapter must outlive its options
        return self._run_options[adapter][0]

    def feeds(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """The session's feeds from model inputs: names it does not take dropped, integer inputs
        as int64, ``attention_mask`` (ones) and ``token_type_ids`` (zeros) filled when missing."""
        feeds = {
            name: np.asarray(value) for name, value in inputs.items() if name in self.input_names
        }
        ids = feeds.get("input_ids")
        if ids is not None:
            if "attention_mask" in self.input_names and "attention_mask" not in feeds:
                feeds["attention_mask"] = np.ones_like(ids)
            if "token_type_ids" in self.input_names and "token_type_ids" not in feeds:
                feeds["token_type_ids"] = np.zeros_like(ids)
        for name, value in feeds.items():
            if np.issubdtype(value.dtype, np.integer) and value.dtype != np.int64:
                feeds[name] = value.astype(np.int64)
        return feeds

    def logits(self, inputs: Inputs, adapter: str | None = None) -> np.ndarray:
        options = self.run_options(adapter)
        return self.session.run([self.logits_name], self.feeds(inputs), options)[0]

    def teacher_forced_logits(self, prompt, continuation) -> np.ndarray:
        raise NotImplementedError(f"a {self.task_kind} predictor does not generate")

    def stream(self, inputs: Inputs, **options) -> Iterator[int]:
        raise NotImplementedError(f"a {self.task_kind} predictor does not generate")


class _Classification:
    """What both classifiers share: one prediction per input, with one adapter's labels."""

    labels: list[str] | None
    manifest: dict
    logits: Callable[..., np.ndarray]
    encode: Callable[[Sequence[Any]], dict[str, np.ndarray]]

    def labels_for(self, adapter: str | None) -> list[str] | None:
        """The label names ``adapter`` answers with: its own run's in a bundle of several
        classifier adapters (``None``: the bundle's ``labels``, its first run's)."""
        check_adapter(adapter, self.manifest.get("adapters") or {})
        if adapter is None:
            return self.labels
        return self.manifest["adapters"][adapter].get("labels") or self.labels

    def _predict(self, items: Sequence[Any], adapter: str | None) -> list[dict[str, Any]]:
        labels = self.labels_for(adapter)  # an unknown adapter fails before any work
        rows = self.logits(self.encode(items), adapter=adapter)
        return [describe_logits(row, labels) for row in rows]

    def run(
        self, inputs: Sequence[str], *, adapter: str | None = None, **options
    ) -> list[dict[str, Any]]:
        return self._predict(list(inputs), adapter)


class TextClassifier(_Classification, OnnxPredictor):
    """``predict(["a text", ...])`` -> one ``{"label", "score", "scores"}`` per text;
    ``adapter="name"`` answers with one adapter of a multi-adapter bundle and its labels."""

    task_kind = kinds.SEQUENCE_CLASSIFICATION

    def __init__(self, folder: Path, manifest: dict, **kwargs):
        super().__init__(folder, manifest, **kwargs)
        self.codec = TextCodec(self.folder, manifest["preprocessing"])

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Right-padded model inputs for texts, tokenized as the tuned model's tokenizer did."""
        return self.pad([self.codec.encode(text) for text in texts])

    def pad(self, ids_list: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Right-padded ``input_ids`` and ``attention_mask`` (B, T) from token ids."""
        width = max(len(ids) for ids in ids_list)
        input_ids = np.full((len(ids_list), width), self.codec.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids_list), width), dtype=np.int64)
        for row, ids in enumerate(ids_list):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def benchmark_inputs(self, *, batch: int = 1, tokens: int = 16) -> dict[str, np.ndarray]:
        ids = self.codec.encode(SAMPLE_TEXT, truncate=False)
        # exactly `tokens` ids, the closing special token ([SEP]) kept as the tokenizer would
        ids = ids[: tokens - 1] + ids[-1:] if self.codec.add_special_tokens else ids[:tokens]
        return self.pad([ids] * batch)

    def predict(
        self, texts: Sequence[str] | str, *, adapter: str | None = None
    ) -> list[dict[str, Any]]:
        if isinstance(texts, str):
            texts = [texts]
        return self._predict(texts, adapter)


class ImageClassifier(_Classification, OnnxPredictor):
    """``predict([path_or_PIL_image, ...])``: turns images upright, resizes, crops, rescales and
    normalises as the tuned model's image processor did (the settings are in the manifest), with
    pillow and numpy (:mod:`tunewright.edge.runtime.images`); ``adapter="name"`` answers with one
    adapter of a multi-adapter bundle and its labels."""

    task_kind = kinds.IMAGE_CLASSIFICATION

    def __init__(self, folder: Path, manifest: dict, **kwargs):
        super().__init__(folder, manifest, **kwargs)
        self.pre = manifest["preprocessing"]
        self.input_name = self.input_names[0]
        problem = check_views(self.pre.get("views"))
        if problem:
            raise BundleError(f"{folder}: {problem}")

    def pixel_values(self, images: Sequence[Any]) -> np.ndarray:
        """(N, 3, H, W) model input: the tuned model's image processor, as the manifest records it."""
        return pixel_values(images, self.pre)

    def encode(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        return {self.input_name: self.pixel_values(images)}

    def benchmark_inputs(self, *, batch: int = 1, tokens: int = 16) -> dict[str, np.ndarray]:
        from PIL import Image

        size = self.pre["size"]
        noise = np.random.default_rng(0).random((size["height"], size["width"], 3)) * 255
        return self.encode([Image.fromarray(noise.astype(np.uint8))] * batch)

    def predict(
        self, images: Sequence[Any] | Any, *, adapter: str | None = None
    ) -> list[dict[str, Any]]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self._predict(images, adapter)


class _TextGeneration(_Adapters):
    """Prompts, chat messages and replies: what both generators share (they need ``codec``)."""

    generates: ClassVar[bool] = True
    codec: TextCodec
    #: each generator's decoding loop, called with the options of :meth:`stream` in order
    _stream: Callable[..., Iterator[int]]

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
        adapter: str | None = None,
    ) -> Iterator[int]:
        """Token ids of the reply to ``inputs`` (``input_ids`` (1, T)), one at a time: greedy at
        temperature 0, else sampled (``top_k``, ``top_p``, ``seed``); until EOS (unless
        ``stop_at_eos`` is off) or ``max_new_tokens``; ``adapter`` of a multi-adapter bundle."""
        check_adapter(adapter, self.adapter_files)  # now, not at the first next()
        return self._stream(
            inputs, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, adapter
        )

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of a raw prompt, or of chat messages rendered with the bundle's chat format."""
        text = prompt if isinstance(prompt, str) else self.codec.render_chat(prompt)
        return self.codec.encode(text, add_special_tokens=False, truncate=False)

    def generate_ids(self, prompt_ids: Sequence[int], **options) -> Iterator[int]:
        """:meth:`stream` from plain token ids."""
        return self.stream(as_prompt_inputs(prompt_ids), **options)

    def generate(self, prompt: str | list[dict[str, str]], **options) -> str:
        """Generate a reply to a raw prompt or to chat messages (``[{"role", "content"}...]``).
        ``adapter="name"`` answers with one adapter of a multi-adapter bundle (``None``: the base)."""
        return self.codec.decode(list(self.generate_ids(self.prompt_ids(prompt), **options)))

    def benchmark_inputs(self, *, batch: int = 1, tokens: int = 32) -> dict[str, np.ndarray]:
        ids = self.codec.encode(SAMPLE_TEXT, add_special_tokens=False, truncate=False)[:tokens]
        return {"input_ids": np.asarray([ids] * batch, dtype=np.int64)}

    def run(
        self,
        inputs: Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        raw: bool = False,
        adapter: str | None = None,
        **options,
    ) -> list[dict[str, Any]]:
        results = []
        for text in inputs:
            prompt = (
                text if raw or not self.codec.chat_format else [{"role": "user", "content": text}]
            )
            results.append(
                {
                    "prompt": text,
                    "reply": self.generate(
                        prompt,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        seed=seed,
                        **({"adapter": adapter} if adapter is not None else {}),
                    ),
                }
            )
        return results


class Generator(_TextGeneration, OnnxPredictor):  # type: ignore[misc]  # stream: options by name
    """Greedy or sampled generation from a decoder exported with its KV cache.

    The cache lives in numpy between steps: ``past_key_values.N.key/value`` go in,
    ``present.N.key/value`` come out and are fed back. Works for optimum's decoder exports and for
    onnxruntime-genai model-builder files alike (the latter take no ``position_ids``).
    """

    task_kind = kinds.CAUSAL_LM

    def __init__(self, folder: Path, manifest: dict, **kwargs):
        super().__init__(folder, manifest, **kwargs)
        self.codec = TextCodec(self.folder, manifest["preprocessing"])
        self.past_inputs = [
            i for i in self.session.get_inputs() if i.name.startswith("past_key_values")
        ]
        self.present_names = [
            name.replace("past_key_values", "present")
            for name in (i.name for i in self.past_inputs)
        ]
        self.uses_position_ids = "position_ids" in self.input_names
        self.eos_token_ids = set(self.codec.eos_token_ids)

    def empty_past(self, batch: int = 1) -> dict[str, np.ndarray]:
        past = {}
        for meta in self.past_inputs:
            _, heads, _, head_dim = meta.shape
            dtype = np.float16 if "float16" in meta.type else np.float32
            past[meta.name] = np.zeros((batch, int(heads), 0, int(head_dim)), dtype=dtype)
        return past

    def step(
        self,
        ids: np.ndarray,
        past: dict[str, np.ndarray],
        past_length: int,
        adapter: str | None = None,
    ):
        """Run new tokens ``ids`` (1, T) after ``past_length`` cached ones; return (logits, past)."""
        total = past_length + ids.shape[1]
        feeds = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((ids.shape[0], total), dtype=np.int64),
            **past,
        }
        if self.uses_position_ids:
            feeds["position_ids"] = np.arange(past_length, total, dtype=np.int64)[None, :].repeat(
                ids.shape[0], 0
            )
        outputs = self.session.run(
            [self.logits_name, *self.present_names], feeds, self.run_options(adapter)
        )
        new_past = {meta.name: value for meta, value in zip(self.past_inputs, outputs[1:])}
        return outputs[0], new_past

    def logits(self, inputs: Inputs, adapter: str | None = None) -> np.ndarray:
        """(B, T, V) for every position of ``input_ids``, from an empty cache. Rows are run one at a
        time over their unpadded tokens (padding, left or right, gets zeros): the cache-shaped
        graph takes no padding mask of its own."""
        ids = np.asarray(inputs["input_ids"], dtype=np.int64)  # (B, T)
        mask = np.asarray(inputs.get("attention_mask", np.ones_like(ids))).astype(bool)
        out = None
        for row in range(ids.shape[0]):
            keep = mask[row]
            logits, _ = self.step(
                ids[row][keep][None, :], self.empty_past(), 0, adapter
            )  # (1, n, V)
            if out is None:
                out = np.zeros((*ids.shape, logits.shape[-1]), dtype=np.float32)
            out[row, keep] = logits[0]
        return out if out is not None else np.zeros((*ids.shape, 0), dtype=np.float32)

    def teacher_forced_logits(self, prompt, continuation, adapter: str | None = None) -> np.ndarray:
        ids = as_prompt_inputs(prompt)["input_ids"]
        logits, past = self.step(ids, self.empty_past(), 0, adapter)
        rows = [logits[0, -1]]
        length = ids.shape[1]
        for token in list(continuation)[:-1]:
            logits, past = self.step(np.asarray([[token]]), past, length, adapter)
            length += 1
            rows.append(logits[0, -1])
        return np.stack(rows).astype(np.float32)

    def _stream(
        self, inputs, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, adapter
    ) -> Iterator[int]:
        rng = np.random.default_rng(seed)
        ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        logits, past = self.step(ids, self.empty_past(), 0, adapter)
        length = ids.shape[1]
        for _ in range(max_new_tokens):
            token = _pick(logits[0, -1], temperature, top_k, top_p, rng)
            if stop_at_eos and token in self.eos_token_ids:
                return
            yield token
            logits, past = self.step(np.asarray([[token]]), past, length, adapter)
            length += 1


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


class GenAIGenerator(_TextGeneration):
    """Generation through onnxruntime-genai for bundles made by its model builder.

    Prompts are tokenized by the bundle's ``tokenizer.json`` (the same ids as the tuned model's
    tokenizer); onnxruntime-genai runs the search loop and keeps the cache. ``logits`` and
    ``teacher_forced_logits`` use the numpy loop over the same ONNX file, so parity is measured
    on exactly these weights.
    """

    runtime: ClassVar[str] = "onnxruntime-genai"
    task_kind: ClassVar[str] = kinds.CAUSAL_LM

    def __init__(self, folder: Path, manifest: dict, *, threads: int | None = None):
        import onnxruntime_genai as og

        self.folder = Path(folder)
        self.manifest = manifest
        self.labels = None
        self.codec = TextCodec(self.folder, manifest["preprocessing"])
        self.eos_token_ids = set(self.codec.eos_token_ids)
        self._og = og
        genai_config = json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))
        #: what onnxruntime-genai takes for padding in a batch (a row's prompt is right-padded)
        self.pad_token_id = int(genai_config["model"].get("pad_token_id", 0))
        config = og.Config(str(self.folder))
        # onnxruntime-genai runs its session on one thread unless told otherwise (measured: the
        # 135M SmolLM2 decodes 100 tokens/s on one of two cores, 132 on both): one per physical
        # core by default, as onnxruntime's own sessions do
        self.threads = threads or physical_cores()
        config.overlay(
            json.dumps(
                {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}
            )
        )
        self.model = og.Model(config)
        self._numpy: Generator | None = None
        self._threads = threads
        # one Adapters container per model: a generator registers only one (research/serving.md)
        self.adapter_files = bundle_adapters(self.folder, manifest)
        self.adapters = None
        if self.adapter_files:
            self.adapters = og.Adapters(self.model)
            for name, path in self.adapter_files.items():
                self.adapters.load(str(path), name)

    @property
    def numpy_generator(self) -> Generator:
        """A :class:`Generator` over the same ONNX file (opened on first use)."""
        if self._numpy is None:
            self._numpy = Generator(self.folder, self.manifest, threads=self._threads)
        return self._numpy

    def logits(self, inputs: Inputs, adapter: str | None = None) -> np.ndarray:
        return self.numpy_generator.logits(inputs, adapter)

    def teacher_forced_logits(self, prompt, continuation, adapter: str | None = None) -> np.ndarray:
        return self.numpy_generator.teacher_forced_logits(prompt, continuation, adapter)

    def _stream(
        self, inputs, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, adapter
    ) -> Iterator[int]:
        og = self._og
        ids = np.asarray(inputs["input_ids"], dtype=np.int32)  # (1, T)
        params = og.GeneratorParams(self.model)
        options: dict[str, Any] = {"max_length": ids.shape[1] + max_new_tokens}
        options.update(self._sampling(temperature, top_k, top_p))
        if not stop_at_eos:
            options["min_length"] = ids.shape[1] + max_new_tokens
        params.set_search_options(**options)
        if seed is not None:
            params.set_search_options(random_seed=seed)
        generator = og.Generator(self.model, params)
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        generator.append_tokens(ids)
        produced = 0
        while not generator.is_done() and produced < max_new_tokens:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if stop_at_eos and token in self.eos_token_ids:
                return
            produced += 1
            yield token

    def can_batch(self, prompt_ids: Sequence[int]) -> bool:
        """Whether ``prompt_ids`` may be a row of :meth:`generate_ids_batch`: onnxruntime-genai
        takes trailing pad tokens for padding, so a prompt that ends with that token goes alone."""
        return bool(prompt_ids) and int(prompt_ids[-1]) != self.pad_token_id

    def generate_ids_batch(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int],
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        stop_at_eos: bool = True,
        adapter: str | None = None,
    ) -> Iterator[list[int | None]]:
        """Decode several prompts together, as the rows of one onnxruntime-genai generator (right-
        padded to the longest): per step, one entry per row, its next token or ``None`` once the
        row has ended (its EOS; a row also ends after its own ``max_new_tokens``). Greedy rows
        give the tokens each prompt gives alone. Sampling draws from one generator for all rows
        (no per-row seed)."""
        check_adapter(adapter, self.adapter_files)
        if len(prompts) != len(max_new_tokens) or not prompts:
            raise ValueError("generate_ids_batch: one max_new_tokens per prompt, at least one")
        for row, ids in enumerate(prompts):
            if not self.can_batch(ids):
                raise ValueError(
                    f"generate_ids_batch: prompt {row} is empty or ends with the pad token "
                    f"({self.pad_token_id}); run it alone"
                )
        return self._stream_batch(
            prompts, list(max_new_tokens), temperature, top_k, top_p, stop_at_eos, adapter
        )

    def _stream_batch(
        self, prompts, max_new_tokens, temperature, top_k, top_p, stop_at_eos, adapter
    ) -> Iterator[list[int | None]]:
        og = self._og
        rows, width, longest = len(prompts), max(len(p) for p in prompts), max(max_new_tokens)
        ids = np.full((rows, width), self.pad_token_id, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
        params = og.GeneratorParams(self.model)
        options: dict[str, Any] = {"batch_size": rows, "max_length": width + longest}
        options.update(self._sampling(temperature, top_k, top_p))
        if not stop_at_eos:
            options["min_length"] = width + longest
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        generator.append_tokens(ids)
        produced = [0] * rows
        ended = [False] * rows
        while not all(ended) and not generator.is_done():
            generator.generate_next_token()
            tokens = generator.get_next_tokens()
            step: list[int | None] = []
            for row in range(rows):
                token = int(tokens[row])
                if not ended[row] and stop_at_eos and token in self.eos_token_ids:
                    ended[row] = True
                if ended[row]:
                    step.append(None)
                    continue
                produced[row] += 1
                ended[row] = produced[row] >= max_new_tokens[row]
                step.append(token)
            yield step

    @staticmethod
    def _sampling(temperature: float, top_k: int, top_p: float) -> dict[str, Any]:
        """onnxruntime-genai's search options for these sampling settings."""
        if temperature <= 0:
            return {"do_sample": False}
        options: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if top_k:
            options["top_k"] = top_k
        return options


class AdapterView:
    """One adapter of a multi-adapter bundle as a predictor of its own: every call of ``logits``,
    ``teacher_forced_logits``, ``stream``, ``generate``, ``generate_ids``, ``predict`` and ``run``
    goes to the shared predictor with ``adapter`` set, and ``labels`` are the adapter's (a
    classifier's); everything else is the predictor's."""

    def __init__(self, predictor: Any, adapter: str | None):
        self.predictor = predictor
        self.adapter = adapter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def logits(self, inputs: Inputs) -> np.ndarray:
        return self.predictor.logits(inputs, adapter=self.adapter)

    def teacher_forced_logits(self, prompt, continuation) -> np.ndarray:
        return self.predictor.teacher_forced_logits(prompt, continuation, adapter=self.adapter)

    def stream(self, inputs: Inputs, **options) -> Iterator[int]:
        return self.predictor.stream(inputs, adapter=self.adapter, **options)

    def generate_ids(self, prompt_ids: Sequence[int], **options) -> Iterator[int]:
        return self.predictor.generate_ids(prompt_ids, adapter=self.adapter, **options)

    def generate(self, prompt: str | list[dict[str, str]], **options) -> str:
        return self.predictor.generate(prompt, adapter=self.adapter, **options)

    def run(self, inputs: Sequence[str], **options) -> list[dict[str, Any]]:
        return self.predictor.run(inputs, adapter=self.adapter, **options)

    def predict(self, items: Any) -> list[dict[str, Any]]:
        return self.predictor.predict(items, adapter=self.adapter)

    @property
    def labels(self) -> list[str] | None:
        labels_for = getattr(self.predictor, "labels_for", None)
        return labels_for(self.adapter) if labels_for else self.predictor.labels


__all__ = [
    "AdapterView",
    "bundle_adapters",
    "check_adapter",
    "OnnxPredictor",
    "TextClassifier",
    "ImageClassifier",
    "Generator",
    "GenAIGenerator",
    "make_session",
    "softmax",
    "log_softmax",
    "describe_logits",
    "as_prompt_inputs",
    "BundleError",
]
