"""``classification``: a text classifier, cross-entropy over the training labels, or MSE when a
label is a number that is not whole (regression).

Examples are ``{"text": str, "label": str | int | float}``. Labels are compared by their text
(``str(label)``): ``1`` and ``"1"`` are one class, and whole-number labels sort as numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from tunewright import Problem, kinds
from tunewright.plugins.common.batching import model_device, pad
from tunewright.plugins.common.labels import is_blank, label_counts_line, sort_labels, unseen_labels
from tunewright.plugins.common.metrics import LABEL_METRIC_DIRECTIONS, macro_scores
from tunewright.plugins.common.records import type_name


def is_regression(values: Iterable[Any]) -> bool:
    """A number that is not whole among the labels makes the data regression."""
    return any(isinstance(v, float) and not float(v).is_integer() for v in values)


def label_names(values: Iterable[Any]) -> list[str]:
    return sort_labels(str(v) for v in values)


def label_problems(example: dict) -> list[str]:
    label = example.get("label")
    if is_blank(label):
        return ["missing label (expected a class name, a whole number, or a number for regression)"]
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
        return [f"label must be a string or a number, got {type_name(label)}"]
    if isinstance(label, float) and not math.isfinite(label):
        return [f"label {label} is not a finite number"]
    return []


def labels_across(
    examples: Sequence[dict],
    locations: Sequence[str],
    *,
    split: str,
    reference_labels: Sequence[str] | None,
    source: str,
) -> list[Problem]:
    """Rules across one file's labels: one kind of label, labels held-out data shares with the
    training data, at least two classes to train on. Shared by the classification tasks."""
    pairs = [
        (e["label"], loc)
        for e, loc in zip(examples, locations)
        if not label_problems(e) and isinstance(e.get("label"), (str, int, float))
    ]
    if not pairs:
        return []
    problems = []
    texts = [(label, loc) for label, loc in pairs if isinstance(label, str)]
    numbers = [(label, loc) for label, loc in pairs if not isinstance(label, str)]
    if texts and numbers:
        minority, majority = (numbers, texts) if len(numbers) <= len(texts) else (texts, numbers)
        label, first_loc = majority[0]
        for value, loc in minority:
            problems.append(
                Problem(
                    loc,
                    (
                        f"label {value!r} is {'a number' if minority is numbers else 'text'}, but "
                        f"{first_loc} has {label!r} (use one kind of label in a dataset: class names, "
                        "whole numbers, or numbers for regression)"
                    ),
                )
            )
        return problems
    regression = is_regression(label for label, _ in pairs)
    if reference_labels is not None and not regression:
        where = "among the job's labels" if split == "train" else "in the training data"
        problems += unseen_labels(pairs, reference_labels, where=where)
    if (
        split == "train"
        and not regression
        and len(pairs) == len(examples)
        and len({str(label) for label, _ in pairs}) == 1
    ):
        problems.append(
            Problem(
                source,
                (
                    f"every example has the label {pairs[0][0]!r} (classification needs at least two "
                    "labels; for regression use numbers that are not all whole)"
                ),
            )
        )
    return problems


def summarize_labels(examples: Sequence[dict]) -> dict:
    values = [e.get("label") for e in examples]
    if is_regression(values):
        numbers = [
            float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        return (
            {
                "target": {
                    "min": min(numbers),
                    "mean": round(sum(numbers) / len(numbers), 4),
                    "max": max(numbers),
                }
            }
            if numbers
            else {}
        )
    counts = Counter(str(v) for v in values)
    return {"labels": {name: counts[name] for name in label_names(values)}}


def render_labels(summary: dict) -> list[str]:
    lines = []
    if summary.get("labels"):
        lines.append(label_counts_line(summary["labels"]))
    if summary.get("target"):
        target = summary["target"]
        lines.append(
            f"target: min {target['min']:g}, mean {target['mean']:g}, max {target['max']:g}"
        )
    return lines


class ClassificationTask:
    model_kind = kinds.SEQUENCE_CLASSIFICATION
    primary_metric = "accuracy"
    metric_directions = {**LABEL_METRIC_DIRECTIONS, "mse": "min", "mae": "min"}
    description = "text classification: cross-entropy, or MSE for numeric labels"
    default_model = "minilm-l6"

    # -- data ----------------------------------------------------------------------------------

    def validate(self, example: dict, location: str, config: Any = None) -> list[Problem]:
        if "text" not in example and "label" not in example:
            return [
                Problem(
                    location,
                    (
                        f"the classification task takes examples with 'text' and 'label', but this example "
                        f"has {', '.join(map(str, example)) or 'no keys'} (use a text-label JSONL or a CSV "
                        "file, or another task)"
                    ),
                )
            ]
        problems = []
        text = example.get("text")
        if not isinstance(text, str):
            problems.append(f"no text (expected a string, got {type_name(text)})")
        elif not text.strip():
            problems.append("empty text (every example needs text to classify)")
        problems += label_problems(example)
        return [Problem(location, message) for message in problems]

    def check_split(self, examples, locations, *, split, reference_labels) -> list[Problem]:
        source = locations[0].rpartition(":")[0] if locations else "data"
        return labels_across(
            examples, locations, split=split, reference_labels=reference_labels, source=source
        )

    def label_set(self, examples: list[dict]) -> list[str] | None:
        """The sorted label names, or ``None`` for regression (a non-whole number among them)."""
        values = [e["label"] for e in examples]
        return None if is_regression(values) else label_names(values)

    def stratify_key(self, example: dict) -> str | None:
        label = example.get("label")
        return None if is_regression([label]) else str(label)

    def metric_for(self, labels) -> str:
        return "mse" if labels is None else "accuracy"

    def summarize(self, examples: list[dict]) -> dict:
        return summarize_labels(examples)

    def render_summary(self, summary: dict) -> list[str]:
        return render_labels(summary)

    # -- model ---------------------------------------------------------------------------------

    def load_tokenizer(self, path, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        return tokenizer

    def load_model(self, path, labels, config, tokenizer=None):
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        kwargs: dict[str, Any] = {}
        if labels is None:
            kwargs.update(num_labels=1, problem_type="regression")
        else:
            kwargs.update(
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                problem_type="single_label_classification",
            )
        # The head is new by design; transformers' "newly initialized" warning would only alarm.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                dtype=torch.float32,
                trust_remote_code=bool(config is not None and config.trust_remote_code),
                **kwargs,
            )
        finally:
            hf_logging.set_verbosity(level)
        if tokenizer is not None and model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        encoded = tokenizer(example["text"])
        label: Any = (
            float(example["label"]) if labels is None else labels.index(str(example["label"]))
        )
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": label,
        }

    def collate(self, features: list[dict], tokenizer) -> dict:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        labels = [f["labels"] for f in features]
        dtype = torch.float32 if isinstance(labels[0], float) else torch.long
        return {
            "input_ids": pad([f["input_ids"] for f in features], pad_id),  # (B, T)
            "attention_mask": pad([f["attention_mask"] for f in features], 0),  # (B, T)
            "labels": torch.tensor(labels, dtype=dtype),  # (B,)
        }

    # -- figures -------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, model, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, C) and labels (N,) of every example."""
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        device = model_device(model)
        logits, labels = [], []
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits.append(model(**inputs).logits.float().cpu())
            labels.append(batch["labels"].cpu())
        if was_training:
            model.train()
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
    return {
        "loss": loss,
        "accuracy": (predicted == labels).float().mean().item(),
        **macro_scores(predicted, labels, logits.shape[-1]),
    }
