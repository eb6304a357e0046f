"""``distill``: a teacher's behaviour into a smaller student (Hinton et al. 2015,
https://arxiv.org/abs/1503.02531), on chat data.

The teacher is a finished run (its adapter merged), a registered model name or a Hugging Face
folder. It reads each training conversation once, teacher-forced; the top ``distill.top_k``
log-probabilities of every assistant position are cached on disk (``tunewright.cache_dir()/distill``,
keyed by the teacher and the tokens), so a slow teacher runs once however many jobs use the data::

    p_t   = softmax(teacher top-k logits / T)                      (K, k), renormalised over the top k
    loss  = T^2 * sum p_t * (log p_t - log_softmax(student / T)[top-k])     per scored position
          + hard_weight * cross-entropy on the data's own tokens   (optional hard labels)

The student is ``model:``, or, with ``distill.student_layers: n``, that model cut down to ``n``
of its decoder layers (evenly spaced, first and last kept), e.g. 12 of SmolLM2's 30: the point of
distilling for the edge. Teacher and student must share the tokenizer. Figures are the chat task's
(``loss``, ``perplexity``, ``mean_token_accuracy`` on the held-out data's own answers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from tunewright import ConfigError, Section, cache_dir, get_plugin_manager
from tunewright.plugins.common.batching import IGNORE
from tunewright.plugins.tasks.chat import ChatTask, scored_logits
from tunewright.plugins.tasks.losses import cross_entropy_sum


class DistillSection(Section):
    """``distill:``, the settings of the ``distill`` task."""

    teacher: str = Field(description="a finished run, a registered model name or a model folder")
    top_k: int = Field(16, ge=1, le=1024, description="teacher log-probabilities kept per position")
    temperature: float = Field(1.0, gt=0, le=20, description="softening of both distributions")
    hard_weight: float = Field(
        0.0, ge=0, le=10, description="weight of the data's own tokens' loss"
    )
    student_layers: int | None = Field(
        None, ge=1, description="keep this many of the student model's decoder layers"
    )

    def check(self, config: Any) -> list[str]:
        if config.task != "distill":
            return [f"distill: the section applies to task: distill, not task: {config.task}"]
        return []


def keep_layers(model: Any, count: int) -> Any:
    """``model`` with ``count`` of its decoder layers, evenly spaced, first and last kept."""
    layers = model.model.layers
    total = len(layers)
    if count > total:
        raise ConfigError(f"distill.student_layers: {count}, but the model has {total} layers")
    if count == total:
        return model
    keep = [0] if count == 1 else [round(i * (total - 1) / (count - 1)) for i in range(count)]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = count
    layer_types = model.config.to_dict().get("layer_types")  # newer configs list each layer
    if layer_types:
        model.config.layer_types = [layer_types[i] for i in keep]
    return model


def load_teacher(name: str) -> tuple[Any, str]:
    """The teacher model (fp32, eval) and a key that names it for the cache."""
    path = Path(name)
    if (path / "config.yaml").is_file() and (path / "adapter").is_dir():
        from tunewright import load_run

        model = load_run(path).model
        stamp = max(f.stat().st_mtime_ns for f in (path / "adapter").iterdir())
        return model, f"run:{path.resolve()}:{stamp}"
    models = get_plugin_manager().registries.models
    if name in models:
        path = Path(models[name].resolve())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), f"model:{path.resolve() if path.exists() else name}"


class DistillTask(ChatTask):
    description = "distillation of a teacher's top-k distribution into a (smaller) student"

    def __init__(self) -> None:
        self.settings: DistillSection | None = None
        self.teacher: Any = None
        self.teacher_key = ""
        #: teacher forward passes run (not read from the cache), for tests and the log
        self.teacher_calls = 0

    def validate(self, example: dict, location: str, config: Any = None) -> list:
        # the job's examples are checked, then tokenized, before the model loads: the settings
        # (and so the teacher) are taken from the first look at the job's config
        if config is not None and config.section("distill") is not self.settings:
            self.settings = config.section("distill")
            self.teacher, self.teacher_key = None, ""
        return super().validate(example, location, config)

    def load_model(self, path, labels, config, tokenizer=None):
        section = config.section("distill") if config is not None else None
        if section is None:
            raise ConfigError("task: distill needs a distill: section naming its teacher")
        if section is not self.settings:
            self.settings = section
            self.teacher, self.teacher_key = None, ""
        student = super().load_model(path, labels, config, tokenizer=tokenizer)
        if section.student_layers:
            student = keep_layers(student, section.student_layers)
        return student

    def _teacher(self) -> Any:
        assert self.settings is not None, "the distill task's model was not loaded"
        if self.teacher is None:
            self.teacher, self.teacher_key = load_teacher(self.settings.teacher)
        return self.teacher

    def _cache_path(self, ids: list[int], labels: list[int]) -> Path:
        assert self.settings is not None
        if not self.teacher_key:
            self._teacher()
        digest = hashlib.sha256(
            json.dumps(
                [self.teacher_key, self.settings.top_k, self.settings.temperature, ids, labels]
            ).encode()
        ).hexdigest()
        return cache_dir() / "distill" / digest[:2] / f"{digest}.pt"

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        features = super().tokenize(example, tokenizer, labels)
        settings = self.settings
        if settings is None:  # tunewright validate: no job, no teacher
            return features
        path = self._cache_path(features["input_ids"], features["labels"])
        if path.exists():
            cached = torch.load(path)
        else:
            cached = self._teacher_top_k(features)
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(".tmp")
            torch.save(cached, staging)
            staging.replace(path)  # atomic: a killed job leaves no half-written entry
        features["teacher_ids"] = cached["ids"]
        features["teacher_logps"] = cached["logps"]
        return features

    @torch.no_grad()
    def _teacher_top_k(self, features: dict) -> dict:
        assert self.settings is not None
        teacher = self._teacher()
        self.teacher_calls += 1
        batch = {
            "input_ids": torch.tensor([features["input_ids"]]),
            "attention_mask": torch.tensor([features["attention_mask"]]),
            "labels": torch.tensor([features["labels"]]),
        }
        logits, _ = scored_logits(teacher, batch)  # (n, V)
        logps = torch.log_softmax(logits.float() / self.settings.temperature, dim=-1)
        top = logps.topk(self.settings.top_k, dim=-1)  # (n, k)
        return {"ids": top.indices.tolist(), "logps": top.values.tolist()}

    def collate(self, features: list[dict], tokenizer) -> dict:
        batch = super().collate(features, tokenizer)
        if features and "teacher_ids" in features[0]:
            # the scored positions of the batch in row-major order, as scored_logits returns them
            batch["teacher_ids"] = torch.tensor(
                [row for f in features for row in f["teacher_ids"]], dtype=torch.long
            )  # (K, k)
            batch["teacher_logps"] = torch.tensor(
                [row for f in features for row in f["teacher_logps"]], dtype=torch.float32
            )  # (K, k)
        return batch

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        settings = self.settings
        assert settings is not None
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        logits, targets = scored_logits(model, inputs)  # (K, V), (K,)
        if "teacher_ids" not in batch:
            return cross_entropy_sum(logits, targets), targets.numel()
        t = settings.temperature
        teacher = torch.log_softmax(batch["teacher_logps"], dim=-1)  # (K, k): renormalised top k
        student = torch.log_softmax(logits.float() / t, dim=-1).gather(
            1, batch["teacher_ids"]
        )  # (K, k)
        kl = (teacher.exp() * (teacher - student)).sum() * t * t
        if settings.hard_weight:
            kl = kl + settings.hard_weight * cross_entropy_sum(logits, targets)
        return kl, targets.numel()


__all__ = ["DistillSection", "DistillTask", "keep_layers", "IGNORE"]
