"""``dpo``: direct preference optimisation (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

Data is the hosted preference format, one pair a line::

    {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
     "preferred_output": [{"role": "assistant", "content": "Paris."}],
     "non_preferred_output": [{"role": "assistant", "content": "Lyon."}]}

Each side is rendered with the chat template as ``prompt + answer``; only the answer's tokens are
scored. With ``logp`` the summed log-probability of an answer under the tuned model and ``ref``
under the reference::

    delta = (logp(chosen) - ref(chosen)) - (logp(rejected) - ref(rejected))
    loss  = -log sigmoid(beta * delta)                       per pair, summed over the pairs

The reference is the same model with its adapter switched off (PEFT's ``disable_adapter()``): no
second copy in memory, so the method must be one whose adapter can be disabled (``lora``,
``ia3``...). ``dpo.init_from: runs/sft`` starts from a supervised run: its adapter is merged into
the base when the model loads, so the new adapter trains on top of it and the reference is the
SFT model, as in TRL's SFT-then-DPO recipe.

Figures on held-out pairs: ``loss``, ``reward_accuracy`` (share of pairs whose chosen answer has
the larger implicit reward ``beta * (logp - ref)``; a tie counts a half, so an untuned adapter
scores 0.5) and ``reward_margin`` (mean reward of chosen minus rejected).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from tunewright import DataError, Problem, Section, kinds
from tunewright.plugins.common.batching import IGNORE, model_device, pad
from tunewright.plugins.common.messages import conversation_problems, text_of
from tunewright.plugins.formats import JsonRecords
from tunewright.plugins.tasks.chat import ChatTask, scored_logits

SIDES = ("preferred_output", "non_preferred_output")


class DpoSection(Section):
    """``dpo:``, the settings of the ``dpo`` task."""

    beta: float = Field(
        0.1,
        ge=0,
        le=2,
        description="strength of the pull towards the reference (DPO's beta), 0..2",
    )
    init_from: str | None = Field(
        None,
        description="a finished run (e.g. runs/sft) whose tuned model is the starting point and the reference",
    )

    def check(self, config: Any) -> list[str]:
        problems = []
        if config.task != "dpo":
            problems.append(f"dpo: the section applies to task: dpo, not task: {config.task}")
        if self.init_from is not None:
            run = Path(self.init_from)
            if not (run / "config.yaml").is_file() or not (run / "adapter").is_dir():
                problems.append(
                    f"dpo.init_from: {self.init_from} is not a finished run (no config.yaml and "
                    "adapter/); train it first"
                )
        return problems


class PreferenceFormat(JsonRecords):
    name = "preference"
    description = (
        'JSONL {"input": {"messages": [...]}, "preferred_output": [{assistant}], '
        '"non_preferred_output": [{assistant}]} (hosted preference format)'
    )

    def detect(self, record: Any) -> bool:
        return isinstance(record, dict) and "preferred_output" in record

    def task_for(self, examples: list[dict]) -> str:
        return "dpo"

    def to_example(self, record: Any) -> dict:
        if not isinstance(record, dict):
            raise DataError(
                "expected a JSON object with input, preferred_output, non_preferred_output"
            )
        missing = [k for k in ("input", *SIDES) if k not in record]
        if missing:
            raise DataError(
                f"no {' or '.join(repr(k) for k in missing)} key (found: "
                f"{', '.join(map(str, record)) or 'no keys'}; expected input.messages, "
                "preferred_output and non_preferred_output)"
            )
        return dict(record)


def _prompt(example: dict) -> Any:
    source = example.get("input")
    return source.get("messages") if isinstance(source, dict) else None


class DpoTask(ChatTask):
    model_kind = kinds.CAUSAL_LM
    primary_metric = "reward_accuracy"
    metric_directions = {"loss": "min", "reward_accuracy": "max", "reward_margin": "max"}
    description = "preference pairs (DPO), the reference is the base with the adapter disabled"
    default_model = "smollm2-135m-instruct"
    #: ``training.max_forward_tokens: auto`` runs each micro-batch of pairs in two pieces: a pair
    #: is two answers and a reference pass, and the activations autograd keeps are DPO's peak
    #: memory. The loss is a sum over pairs, so the step is the same. SmolLM2-135M, 8 pairs a
    #: step, bf16, 2 cores (bench/objectives_bench.py dpo): peak RSS 1,810 -> 1,301 MB, pairs/s
    #: 6.57 -> 5.27; in four pieces 1,270 MB and 3.73 pairs/s
    auto_forward_batches = 0.5

    #: a bundle keeps the tuned model alone, not the reference the rewards need: the export's
    #: parity gate judges it as a chat model, on the held-out prompts and their preferred answers
    parity_task = "chat"

    def __init__(self) -> None:
        self.beta = 0.1

    def parity_examples(self, examples: list[dict]) -> list[dict]:
        return [{"messages": [*_prompt(e), *e["preferred_output"]]} for e in examples]

    # -- data ----------------------------------------------------------------------------------

    def validate(self, example: dict, location: str, config: Any = None) -> list[Problem]:
        prompt = _prompt(example)
        if not isinstance(prompt, list) or not prompt:
            return [
                Problem(
                    location,
                    "input.messages must be a non-empty list of messages (the prompt of the pair)",
                )
            ]
        problems = []
        if isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
            problems.append(
                Problem(
                    location,
                    "input.messages ends with an assistant turn: the answers go in "
                    "preferred_output and non_preferred_output",
                )
            )
        texts = []
        for side in SIDES:
            output = example.get(side)
            if (
                not isinstance(output, list)
                or len(output) != 1
                or not isinstance(output[0], dict)
                or output[0].get("role") != "assistant"
            ):
                problems.append(
                    Problem(
                        location,
                        f"{side} must hold exactly one assistant message, "
                        f'[{{"role": "assistant", "content": ...}}], got {str(output)[:80]}',
                    )
                )
                continue
            texts.append(text_of(output[0].get("content")))
            for message in conversation_problems([*prompt, output[0]], example="a preference pair"):
                problems.append(Problem(location, f"{side}: {message}"))
        if len(texts) == 2 and texts[0] == texts[1]:
            problems.append(
                Problem(
                    location,
                    "preferred_output and non_preferred_output are the same text: "
                    "the pair teaches nothing",
                    "warning",
                )
            )
        return problems

    def label_set(self, examples: list[dict]) -> None:
        return None

    def summarize(self, examples: list[dict]) -> dict:
        return {"pairs": len(examples)}

    def render_summary(self, summary: dict) -> list[str]:
        return [f"preference pairs: {summary['pairs']}"] if "pairs" in summary else []

    # -- model ---------------------------------------------------------------------------------

    def load_model(self, path, labels, config, tokenizer=None):
        section = config.section("dpo") if config is not None else None
        self.beta = section.beta if section is not None else 0.1
        if section is not None and section.init_from:
            from tunewright import load_run

            model = load_run(section.init_from).model  # the SFT adapter merged in, fp32
            if tokenizer is not None and model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            return model
        return super().load_model(path, labels, config, tokenizer=tokenizer)

    # -- tokens --------------------------------------------------------------------------------

    def _side(self, prompt: list[dict], answer: dict, tokenizer) -> tuple[list[int], list[int]]:
        segments = self.segments([*prompt, answer], tokenizer)
        last = max(i for i, (_, trained) in enumerate(segments) if trained)
        input_ids: list[int] = []
        targets: list[int] = []
        for i, (text, _) in enumerate(segments):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            targets += ids if i == last else [IGNORE] * len(ids)  # the answer only
        return input_ids, targets

    def tokenize(self, example: dict, tokenizer, labels=None) -> dict:
        prompt = _prompt(example)
        chosen, chosen_targets = self._side(prompt, example["preferred_output"][0], tokenizer)
        rejected, rejected_targets = self._side(
            prompt, example["non_preferred_output"][0], tokenizer
        )
        return {
            "chosen_ids": chosen,
            "chosen_labels": chosen_targets,
            "rejected_ids": rejected,
            "rejected_labels": rejected_targets,
        }

    def num_tokens(self, features: dict) -> int:
        return max(len(features["chosen_ids"]), len(features["rejected_ids"]))

    def collate(self, features: list[dict], tokenizer) -> dict:
        # chosen sequences first, then rejected: rows i and i + B are one pair
        ids = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        targets = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        return {
            "input_ids": pad(ids, tokenizer.pad_token_id),  # (2B, T)
            "attention_mask": pad([[1] * len(i) for i in ids], 0),  # (2B, T)
            "labels": pad(targets, IGNORE),  # (2B, T)
        }

    # -- loss and figures ----------------------------------------------------------------------

    def _rewards(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``beta * (logp - ref)`` of the chosen and the rejected answers: ``(B,)``, ``(B,)``."""
        policy = sequence_logps(model, batch)  # (2B,)
        with torch.no_grad(), reference(model):
            ref = sequence_logps(model, batch)  # (2B,)
        rewards = self.beta * (policy - ref)
        half = rewards.shape[0] // 2
        return rewards[:half], rewards[half:]

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, int]:
        chosen, rejected = self._rewards(model, batch)
        losses = -torch.nn.functional.logsigmoid(chosen - rejected)  # (B,)
        return losses.sum(), int(losses.shape[0])

    @torch.no_grad()
    def metrics(self, model, batches: Iterable[dict]) -> dict[str, float]:
        was_training = bool(getattr(model, "training", False))
        model.eval()
        device = model_device(model)
        loss, correct, margin, pairs = 0.0, 0.0, 0.0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            chosen, rejected = self._rewards(model, batch)
            difference = (chosen - rejected).float()
            loss += float(-torch.nn.functional.logsigmoid(difference).sum())
            correct += float((difference > 0).sum()) + 0.5 * float((difference == 0).sum())
            margin += float(difference.sum())
            pairs += int(difference.shape[0])
        if was_training:
            model.train()
        if pairs == 0:
            return {"loss": float("nan"), "reward_accuracy": 0.0, "reward_margin": 0.0}
        return {
            "loss": loss / pairs,
            "reward_accuracy": correct / pairs,
            "reward_margin": margin / pairs,
        }


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """The summed log-probability of each row's scored tokens: ``(rows,)``, fp32."""
    logits, targets = scored_logits(model, batch)  # (K, V), (K,)
    token_logps = -torch.nn.functional.cross_entropy(
        logits.float(), targets, reduction="none"
    )  # (K,)
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (R, T)
    rows = (shifted != IGNORE).nonzero()[:, 0]  # (K,): the row of each scored token
    out = torch.zeros(batch["labels"].shape[0], dtype=torch.float32, device=logits.device)
    return out.index_add(0, rows, token_logps)


def reference(model):
    """The context in which ``model`` answers as its reference: the adapter switched off."""
    inner = getattr(model, "module", model)  # inside DistributedDataParallel
    try:
        disable = inner.disable_adapter  # PEFT's switch
    except AttributeError:
        raise RuntimeError(
            "the dpo task uses the base model with the adapter switched off as its reference; "
            f"this model ({type(inner).__name__}) has no adapter to switch off: use a method such "
            "as lora or ia3"
        ) from None
    return disable()
