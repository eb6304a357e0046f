"""``rft``: reinforcement tuning against a grader, GRPO family (Shao et al. 2024,
https://arxiv.org/abs/2402.03300).

Each line is a prompt with its reference item: ``messages`` (or ``input.messages``) without the
answer, plus any fields the grader reads (``{{item.answer}}``). Per training step, for each prompt
of the batch::

    k completions, sampled (temperature, at most rft.max_tokens each)
    r_i   = grader(completion_i, item)                    any registered grader, rft.grader_timeout s
    A_i   = (r_i - mean(r)) / (std(r) + 1e-4)             group-relative advantage
    loss  = mean over completion tokens of
            -exp(logp - logp.detach()) * A_i + beta * (exp(ref - logp) - (ref - logp) - 1)

one update per batch of samples (so the clipped ratio of PPO is 1 and drops out), the reference is
the model with its adapter switched off (no second copy), and the KL term is the k3 estimator TRL
uses. A grader that fails or times out on one completion gives it 0. Held-out figures: the mean
grade of one greedy completion per prompt (``grade``, the primary metric) and ``loss = 1 - grade``.

Export: the grade needs the model to generate and grading is discrete (one greedy answer that
diverges at a harmless tie flips a whole prompt), so the parity gate does not judge a bundle by
it. Once a run has trained, it writes the tuned model's greedy answer to each held-out prompt
beside the prompt (``tuned_answer`` in ``data/validation.jsonl`` and ``data/test.jsonl``); the gate
judges the bundle as a ``chat`` model on those conversations, so its ``mean_token_accuracy`` is
its teacher-forced top-1 agreement with the tuned model along the tuned model's own answers, over
every held-out prompt (the tuned model scores about 1 on them), and the drop is the share of
answer tokens on which the bundle would choose otherwise.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from tunewright import ConfigError, Problem, Section, build_grader, get_plugin_manager, read_yaml
from tunewright.plugins.common.batching import IGNORE, model_device, pad
from tunewright.plugins.tasks.chat import ChatTask, scored_logits

from .dpo import reference


class RftSection(Section):
    """``rft:``, the settings of the ``rft`` task."""

    grader: dict | str = Field(description="a grader config, or the path of a grader YAML file")
    k: int = Field(4, ge=2, le=64, description="completions sampled per prompt (the group)")
    max_tokens: int = Field(32, ge=1, le=4096, description="longest completion, in tokens")
    temperature: float = Field(1.0, gt=0, le=4, description="sampling temperature")
    beta: float = Field(0.04, ge=0, le=2, description="weight of the KL term to the reference")
    grader_timeout: float = Field(
        30.0, gt=0, le=600, description="seconds one grade may take; longer scores 0"
    )
    init_from: str | None = Field(
        None, description="a finished run (e.g. runs/sft): its tuned model is the starting point"
    )

    def check(self, config: Any) -> list[str]:
        problems = []
        if config.task != "rft":
            problems.append(f"rft: the section applies to task: rft, not task: {config.task}")
        if self.init_from is not None and not (Path(self.init_from) / "adapter").is_dir():
            problems.append(f"rft.init_from: {self.init_from} is not a finished run (no adapter/)")
        try:
            load_grader(self.grader)
        except ConfigError as exc:
            problems.append(f"rft.grader: {exc}")
        return problems


def load_grader(spec: dict | str):
    return build_grader(read_yaml(spec) if isinstance(spec, str) else spec, get_plugin_manager())


def prompt_of(example: dict) -> Any:
    source = example.get("input")
    if isinstance(source, dict):
        return source.get("messages")
    return example.get("messages")


#: the key of a held-out example that holds the tuned model's greedy answer (written at the end
#: of training, read by the export's parity gate)
ANSWER_KEY = "tuned_answer"


class RftTask(ChatTask):
    primary_metric = "grade"
    #: the bundle is judged as a chat model on the tuned model's own greedy answers to the
    #: held-out prompts (see the module's docstring)
    parity_task = "chat"
    metric_directions = {"loss": "min", "grade": "max"}
    description = "reinforcement tuning against a grader (GRPO family)"

    def __init__(self) -> None:
        self.settings: RftSection | None = None
        self.grader: Any = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)

    def parity_examples(self, examples: list[dict]) -> list[dict]:
        """The examples that hold the tuned model's answer, as chat conversations: prompt and
        answer (an empty answer still scores the end of the turn). The others (training examples
        lent to calibration, a run trained before answers were recorded) are left out."""
        return [
            {"messages": [*prompt_of(e), {"role": "assistant", "content": e[ANSWER_KEY]}]}
            for e in examples
            if isinstance(e.get(ANSWER_KEY), str)
        ]

    def record_answers(self, run) -> int:
        """Write the tuned model's greedy answer to each held-out prompt into the run's
        ``data/validation.jsonl`` and ``data/test.jsonl`` (``tuned_answer``); returns how many."""
        size = run.config.training.batch_size
        written = 0
        for split in ("validation", "test"):
            part = run.data.split(split)
            if not len(part):
                continue
            features = part.features
            answers = []
            for start in range(0, len(features), size):
                batch = self.collate(features[start : start + size], run.tokenizer)
                device = model_device(run.model)
                batch = {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
                }
                # as the model wrote them: white space stripped would not be its tokens
                answers += self._complete(run.model, batch, 1, sample=False, strip=False)[1]
            rows = [{**e, ANSWER_KEY: a} for e, a in zip(part.examples, answers, strict=True)]
            path = run.run_dir / "data" / f"{split}.jsonl"
            staging = path.with_name(f".{path.name}.tmp")
            staging.write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                encoding="utf-8",
            )
            staging.replace(path)
            written += len(rows)
        return written

    # -- data ----------------------------------------------------------------------------------

    def validate(self, example: dict, location: str, config: Any = None) -> list[Problem]:
        prompt = prompt_of(example)
        if not isinstance(prompt, list) or not prompt:
            return [
                Problem(location, "an rft example needs messages (or input.messages): the prompt")
            ]
        problems = []
        for number, message in enumerate(prompt, start=1):
            if not isinstance(message, dict) or message.get("role") not in (
                "system",
                "user",
                "assistant",
            ):
                problems.append(
                    Problem(location, f"message {number}: role system, user or assistant")
                )
            elif not isinstance(message.get("content"), str):
                problems.append(Problem(location, f"message {number}: content must be text"))
        if not problems and prompt[-1].get("role") == "assistant":
            problems.append(
                Problem(location, "the prompt ends with an assistant turn: the model writes it")
            )
        return problems

    def summarize(self, examples: list[dict]) -> dict:
        return {"prompts": len(examples)}

    def render_summary(self, summary: dict) -> list[str]:
        return [f"prompts: {summary['prompts']}"] if "prompts" in summary else []

    # -- model ---------------------------------------------------------------------------------

    def load_model(self, path, labels, config, tokenizer=None):
        section = config.section("rft") if config is not None else None
        if section is None:
            raise ConfigError("task: rft needs an rft: section with its grader")
        self.settings = section
        self.grader = load_grader(section.grader)
        if section.init_from:  # as dpo.init_from: the SFT adapter merged in, also the reference
            from tunewright import load_run

            model = load_run(section.init_from).model
            if tokenizer is not None and model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            return model
        return super().load_model(path, labels, config, tokenizer=tokenizer)

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        ids = tokenizer.apply_chat_template(
            prompt_of(example), add_generation_prompt=True, tokenize=True
        )
        return {"input_ids": list(ids), "item": example}

    def collate(self, features: list[dict], tokenizer) -> dict:
        ids = [f["input_ids"] for f in features]
        return {
            "input_ids": pad(ids, tokenizer.pad_token_id, side="left"),  # (B, P)
            "attention_mask": pad([[1] * len(i) for i in ids], 0, side="left"),  # (B, P)
            "items": [f["item"] for f in features],
            "tokenizer": tokenizer,
        }

    # -- sampling and grading ------------------------------------------------------------------

    def _complete(
        self, model, batch: dict, k: int, sample: bool, strip: bool = True
    ) -> tuple[torch.Tensor, list[str]]:
        """``(B*k, P+L)`` prompt and completion ids and the completions' texts (``strip``: without
        the white space around them, as they are graded)."""
        settings = self.settings
        assert settings is not None, "the rft task's model was not loaded"
        tokenizer = batch["tokenizer"]
        inner = getattr(model, "module", model)
        was_training = bool(getattr(model, "training", False))
        model.eval()
        options: dict[str, Any] = {"do_sample": sample}
        if sample:
            options["temperature"] = settings.temperature
        with torch.no_grad():
            out = inner.generate(
                input_ids=batch["input_ids"].repeat_interleave(k, 0),
                attention_mask=batch["attention_mask"].repeat_interleave(k, 0),
                max_new_tokens=settings.max_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **options,
            )  # (B*k, P+L)
        if was_training:
            model.train()
        completions = out[:, batch["input_ids"].shape[1] :]  # (B*k, L)
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in completions]
        if strip:
            texts = [text.strip() for text in texts]
        return out, texts

    def _grade(self, texts: list[str], items: list[dict]) -> torch.Tensor:
        settings = self.settings
        assert settings is not None
        futures = [
            self._pool.submit(self.grader.grade, {"output_text": t, "choices": [t]}, item)
            for t, item in zip(texts, items, strict=True)
        ]
        grades = []
        for future in futures:
            try:
                grades.append(float(future.result(timeout=settings.grader_timeout)))
            except Exception:  # a failed or late grade scores 0, as the hosted graders do
                grades.append(0.0)
        return torch.tensor(grades, dtype=torch.float32)

    # -- loss and figures ----------------------------------------------------------------------

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        settings = self.settings
        assert settings is not None
        k, prompt_length = settings.k, batch["input_ids"].shape[1]
        out, texts = self._complete(model, batch, k, sample=True)
        items = [item for item in batch["items"] for _ in range(k)]
        rewards = self._grade(texts, items).view(-1, k)  # (B, k)
        advantages = (rewards - rewards.mean(1, keepdim=True)) / (
            rewards.std(1, keepdim=True, unbiased=False) + 1e-4
        )  # (B, k)
        advantages = advantages.view(-1).to(out.device)  # (B*k,)
        tokenizer = batch["tokenizer"]
        completion = out[:, prompt_length:]  # (B*k, L)
        ended = (completion == tokenizer.eos_token_id).int().cumsum(1)  # (B*k, L)
        keep = (ended == 0) | ((ended == 1) & (completion == tokenizer.eos_token_id))  # up to eos
        mask = torch.cat(
            [batch["attention_mask"].repeat_interleave(k, 0), keep.long()], dim=1
        )  # (B*k, P+L)
        labels = torch.full_like(out, IGNORE)
        labels[:, prompt_length:] = torch.where(keep, completion, IGNORE)
        scored = {"input_ids": out, "attention_mask": mask, "labels": labels}
        policy = token_logps(model, scored)  # (K,)
        with torch.no_grad(), reference(model):
            ref = token_logps(model, scored)  # (K,)
        rows = row_of_tokens(labels)  # (K,)
        ratio = torch.exp(policy - policy.detach())  # 1, with the policy gradient
        per_token = -ratio * advantages[rows]
        if settings.beta:
            delta = ref - policy
            per_token = per_token + settings.beta * (torch.exp(delta) - delta - 1)
        lengths = torch.zeros(out.shape[0], device=out.device).index_add(
            0, rows, torch.ones_like(policy)
        )  # (B*k,)
        per_sequence = torch.zeros(out.shape[0], device=out.device).index_add(0, rows, per_token)
        return (per_sequence / lengths.clamp(min=1)).sum(), int(out.shape[0])

    @torch.no_grad()
    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        device = model_device(model)
        grades: list[float] = []
        for batch in batches:
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            _, texts = self._complete(model, batch, 1, sample=False)
            grades += self._grade(texts, batch["items"]).tolist()
        grade = sum(grades) / len(grades) if grades else 0.0
        return {"loss": 1.0 - grade, "grade": grade}


def row_of_tokens(labels: torch.Tensor) -> torch.Tensor:
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)  # (R, T)
    return (shifted != IGNORE).nonzero()[:, 0]  # (K,)


def token_logps(model, batch: dict) -> torch.Tensor:
    """The log-probability of each scored token, in the order of ``row_of_tokens``: ``(K,)``."""
    logits, targets = scored_logits(model, batch)  # (K, V), (K,)
    return -torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
