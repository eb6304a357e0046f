"""``lora`` and ``dora``: low-rank updates of the linear layers, through PEFT.

LoRA (https://arxiv.org/abs/2106.09685) freezes ``W`` and learns ``B @ A`` of rank ``r``; ``B`` starts
at zero, so the applied model computes exactly what the base model does::

    x ──► W (frozen) ─────────────┐
    │                             (+) ──► y = W x + (alpha / r) · B A x
    └──► A (r × in) ──► B (out × r)┘

DoRA (https://arxiv.org/abs/2402.09353) splits ``W`` into a magnitude vector and a direction and
applies the low-rank update to the direction only; it starts equal to the base model too.

Both fold into ``W`` exactly (``merge_and_unload``), so a merged model has the base architecture.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tunewright import Section, UsageError, hookimpl, kinds

from .lora_fused import fuse_lora_layers
from .model_parts import TEXT_AND_IMAGE_KINDS
from .peft_backed import PEFT_TASK_TYPES, PeftMethod

LORA_REFERENCE = "https://arxiv.org/abs/2106.09685"
DORA_REFERENCE = "https://arxiv.org/abs/2402.09353"


class LoraSettings(Section):
    """LoRA: low-rank adaptation of large language models (https://arxiv.org/abs/2106.09685)."""

    r: int = Field(
        8, ge=1, description="rank of the update B·A; more is more capacity and more weights"
    )
    alpha: float = Field(16, gt=0, description="the update is scaled by alpha / r")
    # 0, as PEFT's own default: on a 2-core CPU the dropout masks of every adapted layer took a
    # quarter of a training step of SmolLM2-135M (torch profiler, aten::bernoulli_)
    dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the input of the update while training"
    )
    target_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="layers to adapt, by name or name suffix (q_proj, query...); auto: every linear "
        "layer inside the transformer blocks (attention and MLP), never the head",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="which biases train too: none, all, or those of adapted layers"
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="further modules trained in full and saved with the adapter; the "
        "classification head is added by itself",
    )

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("list at least one module name, or use auto")
        return value


class DoraSettings(LoraSettings):
    """DoRA: weight-decomposed low-rank adaptation (https://arxiv.org/abs/2402.09353); the same keys
    as ``lora``."""


class LoraMethod(PeftMethod):
    peft_type = "LORA"
    #: image classifiers too (without a PEFT task type the head goes in modules_to_save), and
    #: image-text models (adapters in the language model, the projector in modules_to_save)
    task_kinds = (*TEXT_AND_IMAGE_KINDS, kinds.IMAGE_TEXT_TO_TEXT)

    def __init__(self, name: str = "lora", use_dora: bool = False):
        self.name = name
        self.use_dora = use_dora
        self.config_class = DoraSettings if use_dora else LoraSettings
        self.reference = DORA_REFERENCE if use_dora else LORA_REFERENCE

    def peft_config(self, model, settings, task_kind):
        from peft import LoraConfig

        return LoraConfig(
            task_type=PEFT_TASK_TYPES.get(task_kind),
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=self.target_modules(
                model, settings.target_modules, f"{self.name}.target_modules", task_kind
            ),
            bias=settings.bias,
            modules_to_save=self.modules_to_save(model, settings.modules_to_save, task_kind),
            use_dora=self.use_dora,
        )

    def apply(self, model, settings, task_kind):
        return self._fused(super().apply(model, settings, task_kind))

    def load_folder(self, model, path, saved):
        return self._fused(super().load_folder(model, path, saved))

    def _fused(self, wrapped):
        if not self.use_dora:  # DoRA's magnitudes take PEFT's own forward
            fuse_lora_layers(wrapped)
        return wrapped

    def check_saved(self, saved, path):
        if bool(getattr(saved, "use_dora", False)) != self.use_dora:
            kind = "a DoRA" if saved.use_dora else "a plain LoRA"
            raise UsageError(f"{path}: holds {kind} adapter, not one of method {self.name!r}")


@hookimpl
def register_methods(register):
    register("lora", LoraMethod("lora"))
    register("dora", LoraMethod("dora", use_dora=True))
