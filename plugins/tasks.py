"""Built-in tasks: ``chat`` (causal LM on the chat template) and ``classification``.

chat: the loss covers assistant tokens only. The conversation is rendered with the model's chat
template turn by turn; what each assistant turn adds to the rendering (its content and the end of
turn marker) is trained, everything else is masked with -100::

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n  Hello!<|im_end|>\\n
    ---------------------- -100 -------------------------  ----- trained -----

classification: sequence classification with cross-entropy over the training labels, or MSE when
every label is a number that is not a whole number (regression).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch

from tunewright import DataError, Problem, hookimpl

IGNORE = -100

# ChatML, for tokenizers that come without a chat template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _prepare_tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _pad(sequences: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [
        (s + [value] * (width - len(s))) if side == "right" else ([value] * (width - len(s)) + s)
        for s in sequences
    ]
    return torch.tensor(rows, dtype=torch.long)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


class ChatTask:
    model_kind = "causal_lm"
    primary_metric = "mean_token_accuracy"
    greater_is_better = True
    description = "causal LM on the chat template, loss on assistant turns only"

    def load_tokenizer(self, path, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        return _prepare_tokenizer(tokenizer)

    def label_set(self, examples: list[dict]) -> None:
        return None

    def load_model(self, path, labels, config, tokenizer=None):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, use_safetensors=None,
            trust_remote_code=bool(getattr(config, "trust_remote_code", False)))
        if tokenizer is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def segments(self, messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
        """Split the rendered conversation into ``(text, trained)`` pieces."""
        pieces: list[tuple[str, bool]] = []
        rendered = ""
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompt = tokenizer.apply_chat_template(
                    messages[:i], tokenize=False, add_generation_prompt=True)
                full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
                if not (prompt.startswith(rendered) and full.startswith(prompt)):
                    raise DataError(
                        "the model's chat template does not render conversations turn by turn "
                        "(a prefix changes when a turn is added); use a template that does")
                pieces.append((prompt[len(rendered):], False))
                pieces.append((full[len(prompt):], True))
                rendered = full
        return [(text, trained) for text, trained in pieces if text]

    def tokenize(self, example: dict, tokenizer, max_length: int, labels=None) -> dict:
        input_ids: list[int] = []
        labels: list[int] = []
        for text, trained in self.segments(example["messages"], tokenizer):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids if trained else [IGNORE] * len(ids)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}

    def count_tokens(self, example: dict, tokenizer) -> int:
        return len(tokenizer.apply_chat_template(example["messages"], tokenize=True))

    def collate(self, features: list[dict], tokenizer) -> dict:
        return {
            "input_ids": _pad([f["input_ids"] for f in features], tokenizer.pad_token_id),  # (B, T)
            "attention_mask": _pad([f["attention_mask"] for f in features], 0),  # (B, T)
            "labels": _pad([f["labels"] for f in features], IGNORE),  # (B, T)
        }

    @torch.no_grad()
    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = _model_device(model)
        loss_sum, tokens, correct = 0.0, 0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
            targets = batch["labels"][:, 1:]  # (B, T-1)
            mask = targets != IGNORE
            loss_sum += torch.nn.functional.cross_entropy(
                logits[mask], targets[mask], reduction="sum").item()
            correct += (logits.argmax(-1)[mask] == targets[mask]).sum().item()
            tokens += int(mask.sum())
        model.train(was_training)
        if tokens == 0:
            return {"loss": float("nan"), "perplexity": float("nan"), "mean_token_accuracy": 0.0, "tokens": 0}
        loss = loss_sum / tokens
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "mean_token_accuracy": correct / tokens,
            "tokens": tokens,
        }


class ClassificationTask:
    model_kind = "sequence_classification"
    primary_metric = "accuracy"
    greater_is_better = True
    description = "sequence classification: cross-entropy, or MSE for numeric labels"

    def load_tokenizer(self, path, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        return _prepare_tokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))

    @staticmethod
    def is_regression(labels) -> bool:
        return labels is None

    def label_set(self, examples: list[dict]) -> list | None:
        """The sorted label names, or ``None`` for regression (a non-whole number among them)."""
        values = [e["label"] for e in examples]
        if any(isinstance(v, float) and not float(v).is_integer() for v in values):
            return None
        names = {str(v) for v in values}
        if all(name.lstrip("-").isdigit() for name in names):
            return sorted(names, key=int)
        return sorted(names)

    def metric_for(self, labels) -> tuple[str, bool]:
        return ("mse", False) if labels is None else ("accuracy", True)

    def load_model(self, path, labels, config, tokenizer=None):
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        kwargs: dict[str, Any] = {}
        if labels is None:
            kwargs.update(num_labels=1, problem_type="regression")
        else:
            kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                          label2id={label: i for i, label in enumerate(labels)},
                          problem_type="single_label_classification")
        # The head is new by design; transformers' "newly initialized" warning would only alarm.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32, trust_remote_code=bool(getattr(config, "trust_remote_code", False)),
                **kwargs)
        finally:
            hf_logging.set_verbosity(level)
        if tokenizer is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def tokenize(self, example: dict, tokenizer, max_length: int, labels=None) -> dict:
        encoded = tokenizer(example["text"], truncation=True, max_length=max_length)
        if labels is None:
            label: Any = float(example["label"])
        else:
            label = labels.index(str(example["label"]))
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": label}

    def count_tokens(self, example: dict, tokenizer) -> int:
        return len(tokenizer(example["text"])["input_ids"])

    def collate(self, features: list[dict], tokenizer) -> dict:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        labels = [f["labels"] for f in features]
        dtype = torch.float32 if isinstance(labels[0], float) else torch.long
        return {
            "input_ids": _pad([f["input_ids"] for f in features], pad_id),  # (B, T)
            "attention_mask": _pad([f["attention_mask"] for f in features], 0),  # (B, T)
            "labels": torch.tensor(labels, dtype=dtype),  # (B,)
        }

    @torch.no_grad()
    def predict(self, model, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        device = _model_device(model)
        logits, labels = [], []
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits.append(out.logits.float().cpu())
            labels.append(batch["labels"].cpu())
        model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        logits, labels = self.predict(model, batches)  # (N, C), (N,)
        return classification_metrics(logits, labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Loss plus accuracy and macro precision, recall and F1 (or MSE and MAE for regression)."""
    if labels.is_floating_point():
        predictions = logits.squeeze(-1)
        mse = torch.mean((predictions - labels) ** 2).item()
        return {"loss": mse, "mse": mse, "mae": torch.mean((predictions - labels).abs()).item()}
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    predicted = logits.argmax(-1)
    classes = range(logits.shape[-1])
    precisions, recalls, f1s = [], [], []
    for c in classes:
        tp = int(((predicted == c) & (labels == c)).sum())
        fp = int(((predicted == c) & (labels != c)).sum())
        fn = int(((predicted != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue  # a class absent from both predictions and references says nothing
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {
        "loss": loss,
        "accuracy": (predicted == labels).float().mean().item(),
        "precision": mean(precisions),
        "recall": mean(recalls),
        "f1": mean(f1s),
    }


@hookimpl(trylast=True)
def register_tasks(register):
    register("chat", ChatTask())
    register("classification", ClassificationTask())
