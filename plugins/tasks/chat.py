"""``chat``: a causal LM tuned on conversations, the loss on assistant tokens only.

The conversation is rendered with the model's chat template turn by turn; what each assistant turn
adds to the rendering (its content and the end-of-turn marker) is trained, everything else is
masked with -100::

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n  Hello!<|im_end|>\\n
    ---------------------- -100 -------------------------  ----- trained -----

Examples are ``{"messages": [{"role": "system" | "user" | "assistant", "content": ...}]}`` as
OpenAI's fine-tuning API takes them; ``content`` is text, or a list of ``{"type": "text"}`` parts.
Image parts need a vision task (``image-to-text``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from tunewright import Problem, kinds
from tunewright.plugins.common.batching import IGNORE, model_device, pad
from tunewright.plugins.common.messages import (
    conversation_problems,
    image_parts,
    rendered_turns,
    text_of,
)

from .losses import cross_entropy_sum

# ChatML, for tokenizers that come without a chat template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTask:
    model_kind = kinds.CAUSAL_LM
    primary_metric = "mean_token_accuracy"
    metric_directions = {"loss": "min", "perplexity": "min", "mean_token_accuracy": "max"}
    description = "causal LM on the chat template, loss on assistant turns only"
    default_model = "smollm2-135m-instruct"

    # -- data ----------------------------------------------------------------------------------

    def validate(self, example: dict, location: str, config: Any = None) -> list[Problem]:
        if "messages" not in example:
            return [
                Problem(
                    location,
                    (
                        f"the chat task takes examples with 'messages', but this example has "
                        f"{', '.join(map(str, example)) or 'no keys'} (use a chat, prompt-completion or "
                        "instruction file, or another task)"
                    ),
                )
            ]
        problems = [
            Problem(location, message) for message in conversation_problems(example["messages"])
        ]
        messages = example["messages"] if isinstance(example["messages"], list) else []
        images = sum(image_parts(m.get("content")) for m in messages if isinstance(m, dict))
        if images:
            problems.append(
                Problem(
                    location,
                    (
                        f"{images} image part{'s' if images != 1 else ''}: the chat task trains on text "
                        "only; image parts need a vision task (task: image-to-text)"
                    ),
                )
            )
        return problems

    def label_set(self, examples: list[dict]) -> None:
        return None

    def summarize(self, examples: list[dict]) -> dict:
        turns = [len(e["messages"]) for e in examples if isinstance(e.get("messages"), list)]
        return (
            {"messages": {"mean": round(sum(turns) / len(turns), 1), "max": max(turns)}}
            if turns
            else {}
        )

    def render_summary(self, summary: dict) -> list[str]:
        messages = summary.get("messages")
        return (
            [f"messages per conversation: mean {messages['mean']:g}, max {messages['max']}"]
            if messages
            else []
        )

    # -- model ---------------------------------------------------------------------------------

    def load_tokenizer(self, path, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return tokenizer

    def load_model(self, path, labels, config, tokenizer=None):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch.float32,
            use_safetensors=None,
            trust_remote_code=bool(config is not None and config.trust_remote_code),
        )
        if tokenizer is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    # -- tokens --------------------------------------------------------------------------------

    def segments(self, messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
        """Split the rendered conversation into ``(text, trained)`` pieces."""
        messages = [{**m, "content": text_of(m.get("content"))} for m in messages]
        return [(text, trained) for text, trained, _ in rendered_turns(messages, tokenizer)]

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        input_ids: list[int] = []
        targets: list[int] = []
        for text, trained in self.segments(example["messages"], tokenizer):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            targets += ids if trained else [IGNORE] * len(ids)
        return {"input_ids": input_ids, "labels": targets, "attention_mask": [1] * len(input_ids)}

    def collate(self, features: list[dict], tokenizer) -> dict:
        return {
            "input_ids": pad([f["input_ids"] for f in features], tokenizer.pad_token_id),  # (B, T)
            "attention_mask": pad([f["attention_mask"] for f in features], 0),  # (B, T)
            "labels": pad([f["labels"] for f in features], IGNORE),  # (B, T)
        }

    # -- loss and figures ----------------------------------------------------------------------

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        """Cross-entropy summed over the trained (assistant) tokens, and how many there are."""
        logits, targets = scored_logits(model, batch)  # (K, V), (K,)
        return cross_entropy_sum(logits, targets), targets.numel()

    @torch.no_grad()
    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        device = model_device(model)
        loss_sum, tokens, correct = 0.0, 0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, targets = scored_logits(
                model, batch
            )  # (K, V) in the model's dtype: upcast block by block
            loss_sum += cross_entropy_sum(logits, targets).item()
            correct += (logits.argmax(-1) == targets).sum().item()
            tokens += targets.numel()
        if was_training:
            model.train()
        if tokens == 0:
            return {"loss": float("nan"), "perplexity": float("nan"), "mean_token_accuracy": 0.0}
        loss = loss_sum / tokens
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "mean_token_accuracy": correct / tokens,
        }


def scored_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the positions that predict a trained token, and those tokens: ``(K, V)``, ``(K,)``.

    The LM head runs on those positions only: a hook hands the model's output embeddings ``(K, C)``
    hidden states instead of ``(B, T, C)``. In a chat batch about a third of the positions
    predict an assistant token; the logits of the rest (49,152 floats each for SmolLM2) and their
    gradient are never made. A model whose head cannot be reached (an ONNX session behind a
    torch-like adapter) gives every position's logits and the scored ones are picked from those.
    """
    targets = torch.nn.functional.pad(
        batch["labels"][:, 1:], (0, 1), value=IGNORE
    )  # (B, T): t predicts t+1
    keep = targets != IGNORE  # (B, T)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inner = getattr(model, "module", model)  # the model inside DistributedDataParallel
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        logits = model(**inputs).logits  # (B, T, V)
    else:
        handle = head.register_forward_pre_hook(lambda module, args: (args[0][keep], *args[1:]))
        try:
            logits = model(**inputs, use_cache=False).logits  # (K, V)
        finally:
            handle.remove()
    if logits.dim() == keep.dim() + 1:  # the head ran on every position after all
        logits = logits[keep]  # (K, V)
    return logits, targets[keep]
