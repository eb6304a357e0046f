"""Image+text -> text bundles with onnxruntime, numpy, tokenizers and pillow: no torch.

A bundle holds three parts that torch's model computes in one module::

    images ──views──► pixel values (V, 3, S, S) ──vision.onnx──► image features (V, N, D)
                                                                          │ overwrite the
    prompt ──tokenizer.json──► ids (T,) ──embeddings.npy[ids]──► (T, D) ◄─┘ <image> rows
                                                                  │
                               model.onnx (decoder, inputs_embeds, KV cache) ──► logits (T, vocab)

``vision.onnx`` is the vision tower and the projector; ``model.onnx`` the language model built by
onnxruntime-genai's model builder with ``exclude_embeds`` (inputs_embeds in, logits and the KV
cache out); ``embeddings.npy`` the input embedding matrix (``embeddings-int8.npz``, int8 rows with
a scale each, beside a quantized decoder). The views of an image follow its
``detail`` exactly as training made them (:func:`tunewright.vision.views`), and each view is
resized and normalised as the model's image processor did (its settings are in the manifest).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tunewright import kinds

from .bundle import BundleError
from .predictors import SAMPLE_TEXT, _pick, make_session
from .protocol import Inputs
from .text import TextCodec

# ---------------------------------------------------------------------------------------------
# Views and pixels. The views are tunewright.vision's (what training cut); the pixels follow the
# model's image processor, whose settings the manifest carries.
# ---------------------------------------------------------------------------------------------


def geometry() -> dict[str, int]:
    """The detail geometry the views follow (recorded in a bundle's manifest)."""
    from tunewright.vision import detail

    return {
        "low_side": detail.LOW_SIZE,
        "high_fit": detail.HIGH_FIT,
        "high_short_side": detail.HIGH_SHORT_SIDE,
        "tile": detail.TILE,
    }


def view_settings(job_detail: str | None = None) -> dict[str, Any]:
    """What a bundle records of how training cut its views: the geometry and the job's
    ``vision.detail`` (``None``: each image's own detail, ``auto`` where it names none)."""
    return {**geometry(), "detail": job_detail}


def check_views(recorded: Mapping[str, Any], folder: Any = "") -> None:
    """Raise :class:`BundleError` when this tunewright would cut views other than the ones the
    bundle's model was trained on (its recorded geometry differs)."""
    current = geometry()
    differs = {
        key: (recorded.get(key), value)
        for key, value in current.items()
        if key in recorded and recorded.get(key) != value
    }
    if differs:
        said = ", ".join(f"{key} {was} (here {now})" for key, (was, now) in differs.items())
        raise BundleError(
            f"{folder}: the bundle's model was trained on views cut with {said}; this "
            "tunewright cuts them otherwise: run it with the tunewright version that made it"
        )


def image_views(image, detail: str | None, job_detail: str | None = None) -> list:
    """The views of an image at ``detail``: :func:`tunewright.vision.views`, in RGB. ``job_detail``
    (the job's ``vision.detail``) wins over the image's own, as it did in training."""
    from tunewright.vision import views

    return [
        view if view.mode == "RGB" else view.convert("RGB")
        for view in views(image, job_detail or detail)
    ]


def pixel_values(views: Sequence[Any], image: dict) -> np.ndarray:
    """Views resized, rescaled and normalised as the model's image processor does
    (``image``: the manifest's settings) -> (V, 3, H, W) float32."""
    height, width = image["size"]["height"], image["size"]["width"]
    mean = np.asarray(image["image_mean"], np.float32)
    std = np.asarray(image["image_std"], np.float32)
    out = []
    for view in views:
        view = view.convert("RGB")
        if image.get("do_resize", True):
            view = view.resize((width, height), resample=int(image.get("resample", 2)))
        array = np.asarray(view, dtype=np.float32)  # (H, W, C)
        if image.get("do_rescale", True):
            array = array * np.float32(image.get("rescale_factor", 1 / 255))
        if image.get("do_normalize", True):
            array = (array - mean) / std
        out.append(array.transpose(2, 0, 1))  # (C, H, W)
    return np.stack(out).astype(np.float32)


def open_image(source: Any):
    """An image a user hands the bundle: a PIL image, a path, bytes or a base64 ``data:`` URL,
    checked and decoded as training checked its images (:func:`tunewright.vision.check_image`:
    format from the bytes, EXIF orientation, RGB). Raises :class:`BundleError` saying why not."""
    from PIL import Image

    from tunewright.vision import ImageRefused, check_image, check_reference

    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (bytes, bytearray)):
            return check_image(bytes(source)).image
        if isinstance(source, str) and source.startswith("data:"):
            return check_reference(source).image
        return check_image(Path(source).read_bytes()).image
    except ImageRefused as exc:
        raise BundleError(f"image {str(source)[:80]}: {exc}") from None
    except OSError as exc:
        raise BundleError(
            f"image {str(source)[:80]}: cannot be read ({exc.strerror or exc})"
        ) from None


# ---------------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------------


class ImageTextGenerator:
    """Generation from images and a prompt with a bundle's three parts: the
    :class:`~tunewright.edge.runtime.Predictor` of ``onnxruntime`` / ``image_text_to_text``
    bundles (registered by the ``edge-image-text`` plugin, whose exporter makes them).

    ``generate(messages)``: messages as the image-to-text task takes them (OpenAI content parts;
    an ``image_url`` url may be a path, a data URL, or a PIL image). Model inputs
    (``logits``, ``teacher_forced_logits``, ``stream``) are ``input_ids`` with the ``<image>``
    tokens expanded and ``pixel_values`` (V, 3, S, S) of every view in order, as the task collates
    them.
    """

    runtime: ClassVar[str] = "onnxruntime"
    task_kind: ClassVar[str] = kinds.IMAGE_TEXT_TO_TEXT
    generates: ClassVar[bool] = True
    #: the views of every example come stacked in one ``pixel_values``: :meth:`logits` takes a batch whole
    whole_batches: ClassVar[bool] = True

    def __init__(self, folder: Path, manifest: dict, *, threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = manifest
        self.labels = None
        model = manifest["model"]
        pre = manifest["preprocessing"]
        self.pre = pre
        self.views = dict(pre.get("views") or {})
        check_views(self.views, self.folder)
        self.codec = TextCodec(self.folder, pre)
        self.eos_token_ids = set(self.codec.eos_token_ids)
        self.vision = make_session(self.folder / model["vision_file"], threads=threads)
        self.decoder = make_session(self.folder / model["file"], threads=threads)
        embeddings = self.folder / model["embeddings_file"]
        if not embeddings.is_file():
            raise BundleError(
                f"{folder}: the manifest names {model['embeddings_file']!r}, which is missing"
            )
        if model.get("embeddings_dtype", "float32") == "int8-rows":
            with np.load(embeddings, allow_pickle=False) as data:
                self.embeddings = data["weight"]  # (vocab, D) int8
                self.embedding_scale = data["scale"]  # (vocab,)
        else:
            self.embeddings = np.load(embeddings, mmap_mode="r")  # (vocab, D)
            self.embedding_scale = None
        self.image_token_id = int(pre["image_token_id"])
        self.tokens_per_view = int(pre["tokens_per_view"])
        inputs = self.decoder.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.past_inputs = [i for i in inputs if i.name.startswith("past_key_values")]
        self.present_names = [
            i.name.replace("past_key_values", "present") for i in self.past_inputs
        ]
        self.uses_position_ids = "position_ids" in self.input_names

    # -- pieces ---------------------------------------------------------------------------------

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """(V, 3, S, S) -> (V, N, D)."""
        return self.vision.run(None, {self.vision.get_inputs()[0].name: pixels.astype(np.float32)})[
            0
        ]

    def embed(self, ids: Sequence[int] | np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        """Input embeddings (1, T, D) of ``ids`` with the ``<image>`` rows replaced, in order, by
        the image features of ``pixels``."""
        ids = np.asarray(ids, dtype=np.int64)
        embeds = np.asarray(self.embeddings[ids], dtype=np.float32)  # (T, D)
        if self.embedding_scale is not None:
            embeds *= self.embedding_scale[ids][:, None]
        slots = np.flatnonzero(ids == self.image_token_id)
        if slots.size:
            if pixels is None:
                raise ValueError(
                    f"the prompt holds {slots.size} image tokens but no image was given"
                )
            features = self.image_features(pixels).reshape(-1, embeds.shape[-1])  # (V*N, D)
            if features.shape[0] != slots.size:
                raise ValueError(
                    f"{slots.size} image tokens in the prompt, {features.shape[0]} image "
                    "features from the views"
                )
            embeds[slots] = features
        return embeds[None]

    def empty_past(self) -> dict[str, np.ndarray]:
        past = {}
        for meta in self.past_inputs:
            _, heads, _, head_dim = meta.shape
            dtype = np.float16 if "float16" in meta.type else np.float32
            past[meta.name] = np.zeros((1, int(heads), 0, int(head_dim)), dtype=dtype)
        return past

    def step(self, embeds: np.ndarray, past: dict[str, np.ndarray], past_length: int):
        """Run new positions ``embeds`` (1, T, D) after ``past_length`` cached ones."""
        total = past_length + embeds.shape[1]
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            **past,
        }
        if self.uses_position_ids:
            feeds["position_ids"] = np.arange(past_length, total, dtype=np.int64)[None]
        outputs = self.decoder.run(["logits", *self.present_names], feeds)
        return outputs[0], {meta.name: value for meta, value in zip(self.past_inputs, outputs[1:])}

    # -- what the parity gate and verify call ---------------------------------------------------

    def logits(self, batch: Inputs) -> np.ndarray:
        """Logits (B, T, vocab) of a right-padded batch as the task collates it (``input_ids``,
        ``attention_mask``, ``pixel_values`` of every view in example order); one pass per row."""
        ids = np.asarray(batch["input_ids"])
        mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)))
        pixels = batch.get("pixel_values")
        rows, start = [], 0
        width = ids.shape[1]
        for row in range(ids.shape[0]):
            length = int(mask[row].sum())
            views = int((ids[row, :length] == self.image_token_id).sum()) // self.tokens_per_view
            mine = pixels[start : start + views] if views and pixels is not None else None
            start += views
            logits, _ = self.step(self.embed(ids[row, :length], mine), self.empty_past(), 0)
            padded = np.zeros((width, logits.shape[-1]), dtype=np.float32)
            padded[:length] = logits[0]
            rows.append(padded)
        return np.stack(rows)

    @staticmethod
    def _prompt(
        prompt: Inputs | Sequence[int], pixel_values: np.ndarray | None
    ) -> tuple[list[int], np.ndarray | None]:
        """Token ids and pixel values of a prompt given as model inputs (batch 1) or as ids."""
        if isinstance(prompt, Mapping):
            ids = np.asarray(prompt["input_ids"])
            pixels = prompt.get("pixel_values", pixel_values)
            if pixels is not None and not len(pixels):
                pixels = None
            return [int(i) for i in ids.reshape(-1)], pixels
        return [int(i) for i in prompt], pixel_values

    def teacher_forced_logits(
        self,
        prompt: Inputs | Sequence[int],
        continuation: Sequence[int],
        pixel_values: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits predicting each token of ``continuation`` (len, vocab): the prompt (with its
        images: ``pixel_values`` in the inputs, or given beside plain ids) in one pass, then one
        token at a time through the cache, as generation runs."""
        prompt_ids, pixel_values = self._prompt(prompt, pixel_values)
        logits, past = self.step(self.embed(prompt_ids, pixel_values), self.empty_past(), 0)
        rows = [logits[0, -1]]
        length = len(prompt_ids)
        for token in list(continuation)[:-1]:
            logits, past = self.step(self.embed([token], None), past, length)
            length += 1
            rows.append(logits[0, -1])
        return np.stack(rows).astype(np.float32)

    # -- what a user calls ----------------------------------------------------------------------

    def encode(self, messages: list[dict]) -> tuple[list[int], np.ndarray | None]:
        """Prompt ids (image tokens expanded) and pixel values for chat ``messages``; each image is
        cut into views at its own ``detail``, or at the job's ``vision.detail`` when the bundle
        records one (training cut them so)."""
        if not self.codec.chat_format:
            raise BundleError("this bundle has no chat format; it cannot render image prompts")
        marker = self.pre.get("image_token", "<image>")
        rendered, views = [], []
        for message in messages:
            content = message.get("content", "")
            if isinstance(content, list):
                text = []
                for part in content:
                    if part.get("type") == "text":
                        text.append(part.get("text", ""))
                    elif part.get("type") == "image_url":
                        spec = part.get("image_url") or {}
                        mine = image_views(
                            open_image(spec.get("url")),
                            spec.get("detail"),
                            self.views.get("detail"),
                        )
                        views += mine
                        text.append(marker * len(mine))
                    else:
                        raise BundleError(
                            f"content part {part.get('type')!r} is not text or image_url"
                        )
                content = "".join(text)
            rendered.append({"role": message.get("role"), "content": content})
        ids = self.codec.encode(
            self.codec.render_chat(rendered), add_special_tokens=False, truncate=False
        )
        expanded: list[int] = []
        for token in ids:
            expanded += [token] * self.tokens_per_view if token == self.image_token_id else [token]
        pixels = pixel_values(views, self.pre["image"]) if views else None
        return expanded, pixels

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
        """Tokens after the prompt (``input_ids`` (1, T), ``pixel_values``), through the KV cache:
        greedy at ``temperature`` 0, else sampled (``top_k``, ``top_p``, ``seed``)."""
        prompt_ids, pixels = self._prompt(inputs, None)
        rng = np.random.default_rng(seed)
        logits, past = self.step(self.embed(prompt_ids, pixels), self.empty_past(), 0)
        length = len(prompt_ids)
        for _ in range(max_new_tokens):
            token = _pick(logits[0, -1], temperature, top_k, top_p, rng)
            if stop_at_eos and token in self.eos_token_ids:
                return
            yield token
            logits, past = self.step(self.embed([token], None), past, length)
            length += 1

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        pixel_values: np.ndarray | None = None,
        *,
        max_new_tokens: int = 64,
        stop_at_eos: bool = True,
        **options: Any,
    ) -> Iterator[int]:
        """:meth:`stream` from plain ids and the pixel values of their images."""
        inputs = {"input_ids": np.asarray([list(prompt_ids)], dtype=np.int64)}
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values
        return self.stream(
            inputs, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, **options
        )

    def messages(
        self, text: str, images: Sequence[Any] = (), detail: str | None = None
    ) -> list[dict]:
        """One user turn: the ``images`` (paths, data URLs or PIL images) then ``text``."""
        parts: list[dict] = [
            {
                "type": "image_url",
                "image_url": {"url": image, **({"detail": detail} if detail else {})},
            }
            for image in images
        ]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

    def generate(
        self,
        messages: list[dict] | str,
        *,
        max_new_tokens: int = 64,
        images: Sequence[Any] = (),
        **options: Any,
    ) -> str:
        """The reply to chat ``messages`` with their images, or to one user text with ``images``."""
        if isinstance(messages, str):
            messages = self.messages(messages, images)
        ids, pixels = self.encode(messages)
        return self.codec.decode(
            list(self.generate_ids(ids, pixels, max_new_tokens=max_new_tokens, **options))
        )

    def benchmark_inputs(
        self, *, batch: int = 1, tokens: int = 32, images: Sequence[Any] = ()
    ) -> dict[str, np.ndarray]:
        """A prompt of about ``tokens`` text tokens after ``images`` (default: one 256 x 256 image of
        noise, one view at low detail), as model inputs (batch 1)."""
        if not images:
            from PIL import Image

            noise = np.random.default_rng(0).random((256, 256, 3)) * 255
            images = [Image.fromarray(noise.astype(np.uint8))]
        words = self.codec.decode(
            self.codec.encode(SAMPLE_TEXT, add_special_tokens=False, truncate=False)[:tokens]
        )
        ids, pixels = self.encode(self.messages(words, images))
        inputs = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if pixels is not None:
            inputs["pixel_values"] = pixels
        return inputs

    def run(
        self,
        inputs: Sequence[str],
        *,
        images: Sequence[Any] = (),
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """One reply per prompt in ``inputs``, each prompt shown ``images`` (paths) first."""
        return [
            {
                "prompt": text,
                "images": [str(image) for image in images],
                "reply": self.generate(
                    text,
                    images=images,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    seed=seed,
                ),
            }
            for text in inputs
        ]


__all__ = [
    "ImageTextGenerator",
    "image_views",
    "pixel_values",
    "open_image",
    "geometry",
    "view_settings",
    "check_views",
]
