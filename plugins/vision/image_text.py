"""The ``image-to-text`` task and the packaged ``mobilenet-smollm2-vlm`` model.

``image-to-text``: an image (or several) and a prompt in, text out. Examples are chat JSONL as
the hosted fine-tuning APIs take it: user (or system) turns hold OpenAI content parts,
``{"type": "image_url", "image_url": {"url": ..., "detail": "low" | "high" | "auto"}}`` beside
``{"type": "text", "text": ...}``. The loss covers assistant tokens only, rendered turn by turn
as the ``chat`` task does; every image becomes the views its ``detail`` asks for (low: one view
of the image fit within 512x512; high: an overview and 512-pixel tiles of the image fit within
2048x2048 with its shortest side at most 768), and each view one ``<image>`` marker that the
model's processor expands into its image tokens (49 per view for the packaged model)::

    {"type": "image_url", "image_url": {"url": "7.png", "detail": "high"}}
      -> views [overview, tile 1, tile 2, ...]            (tunewright.vision: checked, decoded,
                                                           cut; again in collate, not kept)
      -> "<image><image><image>..."                        (one marker per view, in the prompt)
      -> 49 image tokens per view                          (the processor)

Any Hugging Face image-text model works (``AutoModelForImageTextToText`` + ``AutoProcessor``)
whose processor takes a list of views; ``mobilenet-smollm2-vlm`` is the offline default: stock
Llava around the ImageNet MobileNetV2 tower, a projector and SmolLM2-135M-Instruct
(:mod:`tunewright.vision.models`), built once into the cache. Every image rule (references
relative to the data file, formats, sizes, decoding, no images from the assistant, detail) is
:mod:`tunewright.vision`'s, as for every vision task.

Metrics on held-out examples: loss, perplexity and next-token accuracy on the assistant tokens;
exact match of the greedy answer to the last assistant turn on at most ``exact_match_examples``
examples; image tokens and pixels per example (what ``detail`` saves).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tunewright import ConfigError, DataError, Problem, hookimpl, kinds
from tunewright.plugins.common.batching import IGNORE, pad
from tunewright.plugins.common.messages import conversation_problems as shared_conversation_problems
from tunewright.plugins.common.messages import rendered_turns

TASK_KIND = kinds.IMAGE_TEXT_TO_TEXT
#: part types tunewright.vision reads as images (it refuses all but image_url with a reason)
IMAGE_PART_TYPES = ("image_url", "image", "input_image", "image_file")


# ---------------------------------------------------------------------------------------------
# Example structure (the images themselves are tunewright.vision's business)
# ---------------------------------------------------------------------------------------------


def _has_text_or_image(content: Any) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(
        isinstance(p, dict) and (p.get("type") == "image_url" or str(p.get("text", "")).strip())
        for p in content
    )


def conversation_problems(messages: Any) -> list[str]:
    """What is wrong with one conversation as a whole: roles, empty turns, the order of turns."""
    return shared_conversation_problems(
        messages,
        example="an example",
        has_content=_has_text_or_image,
        content="text or an image",
        no_messages="an image-to-text example is a conversation: a user turn with images and text, then "
        "an assistant reply",
    )


def structure_problems(example: dict) -> list[str]:
    """Content parts that are neither text nor an image (the image parts themselves, their
    references, detail and roles, are checked by :func:`tunewright.vision.check_example`)."""
    problems = []
    for number, message in enumerate(example.get("messages") or [], start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            continue
        for part_number, part in enumerate(message["content"], start=1):
            where = f"message {number} ({message.get('role')}) part {part_number}"
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    problems.append(f"{where}: a text part needs 'text' as a string")
            elif kind not in IMAGE_PART_TYPES:
                problems.append(
                    f"{where}: unknown content part {kind!r} (allowed: text, image_url)"
                )
    return problems


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


def _register_auto_classes() -> None:
    from tunewright.vision.models import register_auto_classes

    register_auto_classes()


def _quiet_transformers():
    """transformers' per-load notices (slow image processor, ...) would only alarm here."""
    from contextlib import contextmanager

    from transformers.utils import logging as hf_logging

    @contextmanager
    def quiet():
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)

    return quiet()


def _image_token_id(model_or_processor) -> int | None:
    config = getattr(model_or_processor, "config", None)
    for source in (config, model_or_processor):
        for name in ("image_token_id", "image_token_index"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value
    return None


class ImageTextTask:
    """The ``image-to-text`` task: see the module docstring."""

    model_kind = TASK_KIND
    primary_metric = "mean_token_accuracy"
    metric_directions = {
        "loss": "min",
        "perplexity": "min",
        "mean_token_accuracy": "max",
        "exact_match": "max",
        "image_tokens_per_example": "min",
        "pixels_per_example": "min",
    }
    description = "image(s) and a prompt in, text out: chat JSONL with image_url parts, loss on assistant turns"
    default_model = "mobilenet-smollm2-vlm"

    def __init__(self, exact_match_examples: int = 32):
        #: held-out examples whose greedy answer is compared with the reference (bounded: a
        #: generation per example)
        self.exact_match_examples = exact_match_examples

    # -- model and processor ------------------------------------------------------------------

    def load_tokenizer(self, path, trust_remote_code: bool = False):
        """The model's processor (tokenizer + image processor + chat template), with a pad token."""
        from transformers import AutoProcessor

        _register_auto_classes()
        with _quiet_transformers():
            try:
                processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"model: {path} has no image-text processor that transformers can "
                    f"load ({type(exc).__name__}: {exc})"
                ) from exc
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or not hasattr(processor, "image_processor"):
            raise ConfigError(
                f"model: {path} has a {type(processor).__name__}, not an image-text "
                "processor (expected a tokenizer and an image processor)"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if not getattr(processor, "chat_template", None):
            from tunewright.vision.models import chat_template

            processor.chat_template = chat_template()
        return processor

    def load_model(self, path, labels, config, tokenizer=None):
        from transformers import AutoModelForImageTextToText

        _register_auto_classes()
        with _quiet_transformers():
            model = AutoModelForImageTextToText.from_pretrained(
                path,
                dtype=torch.float32,
                trust_remote_code=bool(getattr(config, "trust_remote_code", False)),
            )
        pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
        if pad is not None and getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = pad
        return model

    # -- data rules -----------------------------------------------------------------------------

    def validate(self, example: dict, location: str, config: Any = None) -> list[Problem]:
        """The conversation (roles, order, an assistant reply last), its content parts, detail
        values, images only in user or system turns, and every image decodes. An example without
        images is fine but warned about."""
        if not isinstance(example, dict) or "messages" not in example:
            found = (
                ", ".join(map(str, example))
                if isinstance(example, dict)
                else type(example).__name__
            )
            return [
                Problem(
                    location,
                    f"image-to-text takes chat examples with 'messages', but this "
                    f"example has {found or 'no keys'} (use a chat JSONL with image_url parts)",
                )
            ]
        problems = [
            Problem(location, m)
            for m in conversation_problems(example["messages"]) + structure_problems(example)
        ]
        from tunewright.vision import check_example, has_images

        if not has_images(example):
            return [
                *problems,
                Problem(
                    location,
                    "no image in this example (image-to-text examples carry "
                    "image_url parts; this one trains the language model only)",
                    "warning",
                ),
            ]
        # every image rule (references, formats, sizes, detail values, no images from the
        # assistant...): "excluded", or "error" under vision.on_refused: error
        return problems + check_example(example, location, config)

    def summarize(self, examples: list[dict], *, locations=None, problems=(), config=None) -> dict:
        """tunewright.vision's image facts: formats, sizes, refusals (screening's too), views and
        pixels at the detail each image asks for, at low and at high detail."""
        from tunewright.vision import summarize

        return summarize(examples, config, locations=locations, problems=problems)

    def render_summary(self, summary: dict) -> list[str]:
        from tunewright.vision import render_summary

        lines = render_summary(summary)
        if summary.get("images"):
            lines.append(
                "  this task: each view costs the model's own image tokens "
                "(49 per view for mobilenet-smollm2-vlm)"
            )
        return lines

    def check_split(
        self, examples, locations, *, split: str, reference_labels=None
    ) -> list[Problem]:
        return []

    def label_set(self, examples: list[dict]) -> None:
        return None

    def stratify_key(self, example: dict) -> None:
        return None

    # -- features -------------------------------------------------------------------------------

    def example_views(self, example: dict) -> list[tuple[int, list]]:
        """``(message index, views)`` of every image, in order: decoded and checked again by
        :func:`tunewright.vision.load_images` (an image that changed since validation is refused,
        never trained on), cut by :func:`tunewright.vision.views` at the image's detail, in RGB."""
        from tunewright.edge.runtime.image_text import image_views
        from tunewright.vision import load_images

        return [
            (image.ref.message - 1, image_views(image.image, image.detail()))
            for image in load_images(example)
        ]

    def _messages_with_markers(self, example: dict, views: list[tuple[int, list]]) -> list[dict]:
        """The conversation with each image part replaced by one ``{"type": "image"}`` part per
        view, as processors' chat templates expect."""
        counts = iter(len(v) for _, v in views)
        messages = []
        for message in example["messages"]:
            content = message["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") in IMAGE_PART_TYPES:
                        parts += [{"type": "image"}] * next(counts)
                    else:
                        parts.append({"type": "text", "text": part.get("text", "")})
                content = parts
            messages.append({"role": message["role"], "content": content})
        return messages

    def segments(self, messages: list[dict], processor) -> list[tuple[str, bool, int]]:
        """``(text, trained, first message index after it)`` pieces of the rendered conversation:
        the prompt before each assistant turn (not trained) and the turn itself (trained)."""
        return rendered_turns(messages, processor)

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        """Input ids with the image tokens expanded, labels (-100 outside assistant turns), and
        where the pixels come from (decoded again in :meth:`collate`, so that a data set's
        images are never all held in memory). Never truncates."""
        processor = tokenizer
        views = self.example_views(example)
        messages = self._messages_with_markers(example, views)
        input_ids: list[int] = []
        targets: list[int] = []
        pixels, done = 0, 0  # images consumed so far
        for text, trained, upto in self.segments(messages, processor):
            mine = [group for index, group in views[done:] if index < upto]
            done += len(mine)
            piece_views = [view for group in mine for view in group]
            encoded = processor(
                text=text, images=piece_views or None, add_special_tokens=False, return_tensors="np"
            )
            ids = [int(i) for i in encoded["input_ids"][0]]
            if piece_views:
                pixel = encoded["pixel_values"]  # (V, C, H, W) for Llava-style processors
                pixels += int(pixel.size // pixel.shape[-3]) if pixel.ndim >= 3 else int(pixel.size)
            input_ids += ids
            targets += ids if trained else [IGNORE] * len(ids)
        image_id = _image_token_id(processor)
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": targets,
            # where the pixels come from: the example (which carries its image folder and the
            # job's reading settings) and how many of its images the rendering used (images after
            # the last assistant turn are not rendered)
            "example": example,
            "images": done,
            "views": sum(len(group) for _, group in views[:done]),
            "image_tokens": sum(1 for i in input_ids if i == image_id)
            if image_id is not None
            else 0,
            "pixels": pixels,
        }

    def num_tokens(self, features: dict) -> int:
        return len(features["input_ids"])

    def collate(self, features: list[dict], tokenizer) -> dict:
        """Right-padded ids, mask and labels (B, T); the pixel values of every view of every
        example, in order, as the image processor makes them (V, C, H, W). The images are read
        and checked again here rather than held from tokenize: a data set's pixels never sit in
        memory all at once."""
        processor = tokenizer
        pad_id = processor.tokenizer.pad_token_id
        batch = {
            "input_ids": pad([f["input_ids"] for f in features], pad_id),  # (B, T)
            "attention_mask": pad([f["attention_mask"] for f in features], 0),  # (B, T)
            "labels": pad([f["labels"] for f in features], IGNORE),  # (B, T)
        }
        views = []
        for feature in features:
            if not feature["images"]:
                continue
            group = [
                view
                for _, views_of in self.example_views(feature["example"])[: feature["images"]]
                for view in views_of
            ]
            if len(group) != feature["views"]:
                raise DataError(
                    f"an image changed since it was tokenized ({len(group)} views, "
                    f"{feature['views']} expected)"
                )
            views += group
        if views:
            with _quiet_transformers():
                images = processor.image_processor(views, return_tensors="pt")
            batch.update(
                {key: value for key, value in images.items() if isinstance(value, torch.Tensor)}
            )
        return batch

    def prompt_of(self, batch: dict, model) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(prompt ids, pixel values)`` before the last assistant turn of a one-example batch
        (``None`` prompt when it has no trained tokens): what generation starts from."""
        prompt, _ = last_answer(
            batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
        )
        return prompt, split_pixel_values(batch, _image_token_id(model))[0]

    # -- metrics -------------------------------------------------------------------------------

    @torch.no_grad()
    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        image_id = _image_token_id(model)
        eos = _eos_ids(model)
        loss_sum, tokens, correct, examples = 0.0, 0, 0, 0
        image_tokens, pixels = 0, 0
        matches, judged = 0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
            targets = batch["labels"][:, 1:]  # (B, T-1)
            mask = targets != IGNORE
            loss_sum += torch.nn.functional.cross_entropy(
                logits[mask], targets[mask], reduction="sum"
            ).item()
            correct += (logits.argmax(-1)[mask] == targets[mask]).sum().item()
            tokens += int(mask.sum())
            examples += batch["input_ids"].shape[0]
            if image_id is not None:
                image_tokens += int((batch["input_ids"] == image_id).sum())
            if "pixel_values" in batch:
                pixel = batch["pixel_values"]
                pixels += (
                    int(pixel.numel() // pixel.shape[-3]) if pixel.ndim >= 3 else int(pixel.numel())
                )
            for row, pixel_values in enumerate(split_pixel_values(batch, image_id)):
                if judged >= self.exact_match_examples:
                    break
                prompt, answer = last_answer(
                    batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
                )
                if prompt is None:
                    continue
                reply = greedy_answer(
                    model, prompt, pixel_values, eos, max_new_tokens=len(answer) + 1
                )
                judged += 1
                matches += int(reply == strip_at_eos(answer, eos))
        model.train(was_training)
        loss = loss_sum / tokens if tokens else float("nan")
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)) if tokens else float("nan"),
            "mean_token_accuracy": correct / tokens if tokens else 0.0,
            "exact_match": matches / judged if judged else float("nan"),
            "image_tokens_per_example": image_tokens / examples if examples else 0.0,
            "pixels_per_example": pixels / examples if examples else 0.0,
        }


def _eos_ids(model) -> set[int]:
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    if value is None:
        value = getattr(getattr(model, "config", None), "eos_token_id", None)
    if value is None:
        return set()
    return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}


def split_pixel_values(batch: dict, image_id: int | None) -> list[torch.Tensor | None]:
    """The pixel values of each example of a batch (views are stacked in example order, and each
    view costs the same number of image tokens). ``None`` for an example without images."""
    ids = batch["input_ids"]
    pixel = batch.get("pixel_values")
    if pixel is None or image_id is None:
        return [None] * ids.shape[0]
    per_example = (ids == image_id).sum(-1)  # (B,)
    total = int(per_example.sum())
    if pixel.ndim != 4 or total == 0 or total % pixel.shape[0]:
        raise ValueError(
            f"cannot tell which pixel values belong to which example "
            f"(pixel_values {tuple(pixel.shape)}, {total} image tokens)"
        )
    per_view = total // pixel.shape[0]
    out, start = [], 0
    for count in per_example.tolist():
        views = count // per_view
        out.append(pixel[start : start + views] if views else None)
        start += views
    return out


def last_answer(
    input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor | None, list[int]]:
    """``(prompt ids, answer ids)`` of an example's last assistant turn: the last run of
    trained tokens, and everything before it."""
    length = int(attention_mask.sum())
    trained = (labels[:length] != IGNORE).tolist()
    if not any(trained):
        return None, []
    end = length - trained[::-1].index(True)
    start = end
    while start > 0 and trained[start - 1]:
        start -= 1
    return input_ids[:start], input_ids[start:end].tolist()


def strip_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos:
            return ids[:position]
    return ids


def greedy_answer(
    model,
    prompt: torch.Tensor,
    pixel_values: torch.Tensor | None,
    eos: set[int],
    max_new_tokens: int,
) -> list[int]:
    """The model's greedy continuation of ``prompt`` (T,) up to an end token: through its cache
    when its output carries one, else by running the whole sequence again (an ONNX adapter)."""
    device = prompt.device
    inputs = {
        "input_ids": prompt[None],
        "attention_mask": torch.ones_like(prompt)[None],
        "use_cache": True,
    }
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    out = model(**inputs)
    sequence = prompt.tolist()
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        if token in eos:
            break
        tokens.append(token)
        sequence.append(token)
        past = getattr(out, "past_key_values", None)
        if past is not None:
            out = model(
                input_ids=torch.tensor([[token]], device=device),
                attention_mask=torch.ones((1, len(sequence)), dtype=torch.long, device=device),
                past_key_values=past,
                use_cache=True,
            )
        else:
            full = torch.tensor([sequence], device=device)
            out = model(**{**inputs, "input_ids": full, "attention_mask": torch.ones_like(full)})
    return tokens


# ---------------------------------------------------------------------------------------------
# The packaged model
# ---------------------------------------------------------------------------------------------


class MobileNetSmolLM2:
    """``mobilenet-smollm2-vlm``: the composed model, built once into the cache from the packaged
    SmolLM2-135M-Instruct conversion and the packaged ImageNet MobileNetV2."""

    description = (
        "image+text -> text: ImageNet MobileNetV2 tower + projector + SmolLM2-135M-Instruct "
        "(stock Llava; 49 image tokens per 224x224 view)"
    )
    version = "1"  # bump to rebuild cached builds after a change here
    language_model = "smollm2-135m-instruct"

    def resolve(self, models: dict | None = None) -> Path:
        """The cached build; building it needs ``models``, the registered model providers (the
        engine passes them), for the language model."""
        from tunewright import atomic_directory, cache_dir

        target = cache_dir() / "models" / f"mobilenet-smollm2-vlm-v{self.version}"
        if (target / "config.json").is_file():
            return target
        if models is None:
            raise ConfigError(
                f"model: mobilenet-smollm2-vlm is built from the registered model "
                f"{self.language_model!r}: call resolve(models=registries.models)"
            )
        providers = models
        if self.language_model not in providers:
            raise ConfigError(
                f"model: mobilenet-smollm2-vlm needs the registered model "
                f"{self.language_model!r}, which no plugin provides"
            )
        source = Path(providers[self.language_model].resolve())
        build_composed_folder(source, target, atomic_directory)
        return target


def build_composed_folder(language_model_dir: Path, target: Path, atomic_directory) -> None:
    """Compose the packaged model from a causal LM folder and write it, with its processor, to
    ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewright.vision.classifiers import MOBILENET_V2_DISTRIBUTION, MOBILENET_V2_SHA256
    from tunewright.vision.models import compose_image_text_model

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(language_model_dir)
        language_model = AutoModelForCausalLM.from_pretrained(
            language_model_dir, dtype=torch.float32
        )
        model, processor = compose_image_text_model(
            language_model, tokenizer, imagenet_weights=True
        )
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / "tunewright_build.json").write_text(
            json.dumps(
                {
                    "language_model": str(language_model_dir),
                    "vision_weights": {
                        "distribution": MOBILENET_V2_DISTRIBUTION,
                        "sha256": MOBILENET_V2_SHA256,
                    },
                },
                indent=2,
            )
            + "\n"
        )


@hookimpl(trylast=True)
def register_models(register):
    register("mobilenet-smollm2-vlm", MobileNetSmolLM2())


@hookimpl(trylast=True)
def register_tasks(register):
    register("image-to-text", ImageTextTask())
