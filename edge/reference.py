"""Held-out examples turned into model inputs, and what the tuned PyTorch model makes of them.

This is the PyTorch side of the parity gate. Its results (:class:`Reference`) are compared with
the ONNX side in :mod:`tunewright.edge.parity`.

- classification (text or image): logits of every held-out example, and its label index;
- generation: for the task metric, each held-out conversation teacher-forced (logits at every
  position, the assistant tokens marked); for fidelity, the tuned model's own greedy continuation
  of a few prompts, with its logits at every continuation step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .protocols import TASK_KINDS


@dataclass
class ClassificationReference:
    feeds: list[dict[str, np.ndarray]]   # one batch-1 input dict per example
    labels: np.ndarray                    # (N,) label index, -1 when unknown
    logits: np.ndarray                    # (N, C) tuned model


@dataclass
class GenerationReference:
    sequences: list[np.ndarray]           # held-out conversations, token ids (T,)
    targets: list[np.ndarray]             # (T,) bool: the token at t is an assistant token
    token_logprobs: list[np.ndarray]      # tuned model, log-prob of the true next token (T-1,)
    token_hits: list[np.ndarray]          # tuned model, argmax == true next token (T-1,)
    prompts: list[list[int]]              # prompts for fidelity
    continuations: list[list[int]]        # tuned model's greedy continuation of each prompt
    continuation_logits: list[np.ndarray] # (len(cont), V) tuned model's logits predicting each token


@dataclass
class Reference:
    task_kind: str
    classification: ClassificationReference | None = None
    generation: GenerationReference | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def label_index(label: Any, labels: list[str] | None, model) -> int:
    if label is None:
        return -1
    if labels and str(label) in labels:
        return labels.index(str(label))
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    label2id = getattr(getattr(model, "config", None), "label2id", None) or {}
    if label in label2id:
        return int(label2id[label])
    if isinstance(label, str) and label.isdigit():
        return int(label)
    return -1


def _torch_logits(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
    return logits.float().numpy()


def classification_reference(model, preprocessor, task_kind: str, examples: list[dict],
                             labels: list[str] | None, *, max_length: int = 128,
                             input_names: tuple[str, ...] | None = None) -> ClassificationReference:
    import inspect

    params = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {"input_ids", "attention_mask", "token_type_ids"} if takes_any else set(params)
    feeds = []
    for example in examples:
        if task_kind == "image_classification":
            from .runtime.images import open_rgb

            image = open_rgb(example["image"])  # upright and RGB, as training and the runtime see it
            pixel = preprocessor(images=image, return_tensors="np")["pixel_values"]
            feeds.append({"pixel_values": pixel.astype(np.float32)})
        else:
            enc = preprocessor(example["text"], truncation=True, max_length=max_length, return_tensors="np")
            feed = {k: v.astype(np.int64) for k, v in enc.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids") and k in accepted}
            feeds.append(feed)
    logits = np.concatenate([_torch_logits(model, feed) for feed in feeds]) if feeds else np.zeros((0, 0))
    label_ids = np.asarray([label_index(e.get("label"), labels, model) for e in examples], dtype=np.int64)
    return ClassificationReference(feeds=feeds, labels=label_ids, logits=logits)


def chat_split(example: dict, tokenizer, tokenize: Callable | None = None,
               max_length: int = 512) -> tuple[list[int], np.ndarray, list[int]]:
    """``(ids, assistant_mask, prompt_ids)`` of a chat example: the whole conversation, which of its
    tokens the assistant wrote, and the prompt before the last assistant turn.

    ``tokenize`` is the task's own ``tokenize(example, tokenizer, max_length)`` when the engine gives
    one (its ``labels`` mark the trained tokens with anything but -100); otherwise the chat template
    decides, as transformers' assistant masks do.
    """
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if tokenize is not None:
        features = tokenize(example, tokenizer, max_length)
        ids = [int(i) for i in features["input_ids"]]
        mask = np.asarray([int(l) != -100 for l in features["labels"]], dtype=bool)
        # the prompt ends where the last run of trained (assistant) tokens starts
        start = len(ids)
        while start > 0 and mask[start - 1]:
            start -= 1
        return ids, mask, ids[:start] if 0 < start < len(ids) else ids[:-1]
    prompt_ids = list(tokenizer.apply_chat_template(messages[:last], add_generation_prompt=True, tokenize=True))
    ids = list(tokenizer.apply_chat_template(messages[: last + 1], tokenize=True))[:max_length]
    mask = np.zeros(len(ids), dtype=bool)
    mask[len(prompt_ids):] = True
    return ids, mask, prompt_ids


def greedy_continuation(model, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """The tuned model's greedy continuation (eos not special: the gate wants ``new_tokens``
    positions) and its logits predicting each token, (new_tokens, V)."""
    import torch

    tokens, rows = [], []
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(new_tokens):
            last = out.logits[0, -1].float()
            rows.append(last.numpy().copy())
            token = int(last.argmax())
            tokens.append(token)
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, np.stack(rows)


def generation_reference(model, tokenizer, examples: list[dict], *, tokenize: Callable | None = None,
                         fidelity_examples: int = 8, new_tokens: int = 32,
                         max_length: int = 512) -> GenerationReference:
    import torch

    ref = GenerationReference([], [], [], [], [], [], [])
    prompts = []
    for example in examples:
        ids, mask, prompt_ids = chat_split(example, tokenizer, tokenize, max_length)
        prompts.append(prompt_ids)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        nxt = torch.tensor(ids[1:])
        ref.sequences.append(np.asarray(ids, dtype=np.int64))
        ref.targets.append(mask)
        ref.token_logprobs.append(logp.gather(-1, nxt[:, None])[:, 0].numpy())
        ref.token_hits.append((logits[:-1].argmax(-1) == nxt).numpy())
    for prompt_ids in prompts[:fidelity_examples]:
        continuation, logits = greedy_continuation(model, prompt_ids, new_tokens)
        ref.prompts.append(list(prompt_ids))
        ref.continuations.append(continuation)
        ref.continuation_logits.append(logits)
    return ref


def build_reference(model, preprocessor, task_kind: str, examples: list[dict], *, labels=None,
                    tokenize: Callable | None = None, max_examples: int = 256,
                    fidelity_examples: int = 8, new_tokens: int = 32, max_length: int = 512) -> Reference:
    if task_kind not in TASK_KINDS:
        raise ValueError(f"task kind {task_kind!r} is not one of {', '.join(TASK_KINDS)}")
    model.eval()
    if task_kind == "causal_lm":
        gen = generation_reference(model, preprocessor, examples[:max_examples], tokenize=tokenize,
                                   fidelity_examples=fidelity_examples, new_tokens=new_tokens,
                                   max_length=max_length)
        return Reference(task_kind, generation=gen)
    cls = classification_reference(model, preprocessor, task_kind, examples[:max_examples], labels,
                                   max_length=max_length)
    return Reference(task_kind, classification=cls)
