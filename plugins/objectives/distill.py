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

A **bundle** (a folder with a tunewright ``manifest.json``) can be the teacher too. The torch-free
runtime gives no logits to keep, so the bundle *answers* instead, the seeds' process::

    answer = bundle.generate(prompt, greedy, at most distill.max_tokens)    once per prompt, cached
    grade  = distill.grader(answer, item)                                   optional
    keep   = grade >= distill.min_grade                                     the others are excluded
    loss   = cross-entropy of the student on the kept answers               hard labels

The prompt is the conversation before its last assistant turn (or the whole conversation when it
ends with a user turn); the teacher's answer takes that turn's place, in the training and the
held-out examples alike, so the held-out figures are the student's on the teacher's answers.
The grader sees ``{{sample.output_text}}`` (the answer) and the example as ``item``, with
``{{item.reference_answer}}`` the data's own last answer where it has one. An answer below
``min_grade`` is an ``excluded`` problem at the example's line (the data summary counts them);
the run writes ``distill.json`` (answers, kept, mean grade) and says how many it kept.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from tunewright import ConfigError, Problem, Section, cache_dir, get_plugin_manager, kinds
from tunewright.plugins.common.batching import IGNORE
from tunewright.plugins.common.messages import text_of
from tunewright.plugins.tasks.chat import ChatTask, scored_logits
from tunewright.plugins.tasks.losses import cross_entropy_sum

from .rft import load_grader

#: the settings that shape a local teacher's top-k distribution, which a bundle teacher has not
LOGIT_SETTINGS = ("top_k", "temperature", "hard_weight")
#: the settings of a bundle teacher's answers
ANSWER_SETTINGS = ("grader", "min_grade")


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
    max_tokens: int = Field(
        64, ge=1, le=4096, description="longest answer a bundle teacher writes, in tokens"
    )
    grader: dict | str | None = Field(
        None,
        description="a grader config (or YAML file) that grades a bundle teacher's answers",
    )
    min_grade: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keep only the bundle teacher's answers graded at least this (needs grader)",
    )
    grader_timeout: float = Field(
        30.0, gt=0, le=600, description="seconds one grade may take; longer scores 0"
    )

    @property
    def bundle_teacher(self) -> bool:
        return is_bundle(self.teacher)

    def check(self, config: Any) -> list[str]:
        if config.task != "distill":
            return [f"distill: the section applies to task: distill, not task: {config.task}"]
        problems = []
        if config.runner == "federated":
            problems.append(
                "distill: does not run under runner: federated: every site would need the "
                "teacher (a model, a run or a bundle as large as the one being distilled) and "
                "would run it on its own data, and a bundle teacher's graded answers would be "
                "kept or left out site by site; distill centrally (runner: local), then tune "
                "the student federated with task: chat"
            )
        # set and not at its default: a run's saved config.yaml spells out every default, and
        # reading it back (tunewright export, eval) must not find settings the user never gave
        given = {
            key
            for key in self.model_fields_set
            if getattr(self, key) != type(self).model_fields[key].default
        }
        if self.bundle_teacher:
            from tunewright.edge.runtime import BundleError, read_manifest

            try:
                manifest = read_manifest(self.teacher)
            except BundleError as exc:
                return [f"distill.teacher: {exc}"]
            if manifest.get("task_kind") != kinds.CAUSAL_LM:
                problems.append(
                    f"distill.teacher: the bundle {self.teacher} is a "
                    f"{manifest.get('task_kind')} model; a teacher bundle must generate text "
                    f"({kinds.CAUSAL_LM})"
                )
            problems += [
                f"distill.{key}: a bundle teacher gives no logits (the torch-free runtime "
                "generates text): the student learns its answers as hard labels; remove "
                f"distill.{key}"
                for key in LOGIT_SETTINGS
                if key in given
            ]
        else:
            problems += [
                f"distill.{key}: grades the answers a bundle teacher writes; the teacher "
                f"{self.teacher} is not a bundle (a local teacher gives its top-k distribution "
                "on the data's own answers, which are not graded)"
                for key in ("max_tokens", *ANSWER_SETTINGS)
                if key in given
            ]
        if self.min_grade is not None and self.grader is None:
            problems.append(
                "distill.min_grade: keeps the teacher's answers graded at least this, but no "
                "distill.grader grades them; add a grader or remove min_grade"
            )
        if self.grader is not None:
            try:
                load_grader(self.grader)
            except ConfigError as exc:
                problems.append(f"distill.grader: {exc}")
        return problems


def is_bundle(teacher: str) -> bool:
    """Whether ``teacher`` names a bundle (a folder with a ``manifest.json``, the runtime's
    ``MANIFEST``; named here so that a config check with a local teacher imports no runtime)."""
    return (Path(teacher) / "manifest.json").is_file()


def split_prompt(messages: list[dict]) -> tuple[list[dict], dict | None]:
    """The conversation before its last assistant turn, and that turn (``None`` when the
    conversation ends with another role: all of it is the prompt)."""
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1]
    return list(messages), None


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
        #: teacher forward passes (or a bundle teacher's answers) run, not read from the cache
        self.teacher_calls = 0
        self.bundle: Any = None  # a bundle teacher's predictor
        self.grader: Any = None
        #: a bundle teacher's answers of this job, per example location: grade and whether kept
        self.answers: dict[str, dict[str, Any]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def _use(self, section: DistillSection | None) -> None:
        if section is not self.settings:
            self.settings = section
            self.teacher, self.teacher_key = None, ""
            self.bundle, self.grader, self.answers = None, None, {}

    def validate(self, example: dict, location: str, config: Any = None) -> list:
        # the job's examples are checked, then tokenized, before the model loads: the settings
        # (and so the teacher) are taken from the first look at the job's config
        if config is not None:
            self._use(config.section("distill"))
        settings = self.settings if config is not None else None
        if (
            settings is None
            or not settings.bundle_teacher
            or not isinstance(example.get("messages"), list)
        ):
            return super().validate(example, location, config)
        # a bundle teacher writes the answer: the data may end with its prompt
        prompt, answer = split_prompt(example["messages"])
        stand_in = answer or {"role": "assistant", "content": "the teacher's answer"}
        problems = super().validate({**example, "messages": [*prompt, stand_in]}, location, config)
        if any(p.severity == "error" for p in problems):
            return problems
        text = self.teacher_answer(prompt)
        grade = None
        if settings.grader is not None:
            item = dict(example)
            if answer is not None:
                item.setdefault("reference_answer", text_of(answer.get("content")))
            grade = self._grade(text, item)
        kept = bool(text) and (settings.min_grade is None or (grade or 0.0) >= settings.min_grade)
        self.answers[location] = {"grade": grade, "kept": kept}
        if not text:
            problems.append(
                Problem(location, "the teacher's answer is empty: left out", "excluded")
            )
        elif not kept:
            problems.append(
                Problem(
                    location,
                    f"the teacher's answer graded {grade:.3g}, below distill.min_grade "
                    f"{settings.min_grade:g}: left out",
                    "excluded",
                )
            )
        return problems

    # -- a bundle teacher's answers ------------------------------------------------------------

    def teacher_answer(self, prompt: list[dict]) -> str:
        """The bundle teacher's greedy answer to ``prompt``, from the cache when it has it."""
        settings = self.settings
        assert settings is not None
        from tunewright.edge.runtime import read_manifest

        if not self.teacher_key:
            self.teacher_key = f"bundle:{read_manifest(settings.teacher)['manifest_sha256']}"
        prompt = [{"role": m["role"], "content": text_of(m.get("content"))} for m in prompt]
        digest = hashlib.sha256(
            json.dumps([self.teacher_key, "answer", settings.max_tokens, prompt]).encode()
        ).hexdigest()
        path = cache_dir() / "distill" / digest[:2] / f"{digest}.json"
        if path.exists():
            return str(json.loads(path.read_text(encoding="utf-8"))["answer"])
        if self.bundle is None:
            from tunewright.edge.runtime import load_bundle

            self.bundle = load_bundle(settings.teacher)
        self.teacher_calls += 1
        text = self.bundle.generate(
            prompt, max_new_tokens=settings.max_tokens, temperature=0.0
        ).strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps({"answer": text}), encoding="utf-8")
        staging.replace(path)  # atomic: a killed job leaves no half-written entry
        return text

    def _grade(self, text: str, item: dict) -> float:
        """The grade of one answer; a grader that fails or runs late gives 0, as in ``rft``."""
        settings = self.settings
        assert settings is not None and settings.grader is not None
        if self.grader is None:
            self.grader = load_grader(settings.grader)
        future = self._pool.submit(
            self.grader.grade, {"output_text": text, "choices": [text]}, item
        )
        try:
            return float(future.result(timeout=settings.grader_timeout))
        except Exception:
            return 0.0

    def answers_summary(self) -> dict[str, Any] | None:
        """How many answers a bundle teacher gave this job and how many were kept; ``None``
        for a local teacher."""
        settings = self.settings
        if settings is None or not settings.bundle_teacher:
            return None
        grades = [a["grade"] for a in self.answers.values() if a["grade"] is not None]
        return {
            "teacher": settings.teacher,
            "answers": len(self.answers),
            "kept": sum(a["kept"] for a in self.answers.values()),
            "min_grade": settings.min_grade,
            "mean_grade": sum(grades) / len(grades) if grades else None,
            "max_tokens": settings.max_tokens,
        }

    # -- model ---------------------------------------------------------------------------------

    def load_model(self, path, labels, config, tokenizer=None):
        section = config.section("distill") if config is not None else None
        if section is None:
            raise ConfigError("task: distill needs a distill: section naming its teacher")
        self._use(section)
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
        settings = self.settings
        if settings is not None and settings.bundle_teacher:
            # the teacher's answer in place of the data's: hard labels, no top-k to add
            prompt, _ = split_prompt(example["messages"])
            answer = {"role": "assistant", "content": self.teacher_answer(prompt)}
            return super().tokenize({**example, "messages": [*prompt, answer]}, tokenizer, labels)
        features = super().tokenize(example, tokenizer, labels)
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


__all__ = ["DistillSection", "DistillTask", "keep_layers", "is_bundle", "split_prompt", "IGNORE"]
