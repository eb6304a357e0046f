"""``ia3``: (IA)³, learnt vectors that rescale activations, through PEFT.

(IA)³ (https://arxiv.org/abs/2205.05638) multiplies the outputs of the key and value projections and
the input of the second feed-forward layer by learnt vectors that start at one, so the applied model
starts equal to the base model and trains a few thousand numbers::

    k = l_k ⊙ (W_k x)      v = l_v ⊙ (W_v x)      y = W_down (l_ff ⊙ h)

A rescaling folds exactly into the weights it follows or precedes (``merge_and_unload``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunewright import ConfigError, Section, hookimpl

from .model_parts import linear_suffixes, model_summary
from .peft_backed import PEFT_TASK_TYPES, PeftMethod

REFERENCE = "https://arxiv.org/abs/2205.05638"


class Ia3Settings(Section):
    """(IA)³: infused adapter by inhibiting and amplifying inner activations
    (https://arxiv.org/abs/2205.05638)."""

    target_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="layers whose activations are rescaled, by name or name suffix; auto: the "
        "key, value and second feed-forward layers of architectures PEFT knows",
    )
    feedforward_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="those of target_modules whose input (not output) is rescaled: the second "
        "feed-forward layer; auto: PEFT's choice for the architecture",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="further modules trained in full and saved with the adapter; the "
        "classification head is added by itself",
    )


class Ia3Method(PeftMethod):
    name = "ia3"
    config_class = Ia3Settings
    reference = REFERENCE
    peft_type = "IA3"

    def peft_config(self, model, settings, task_kind):
        from peft import IA3Config
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
        )

        model_type = getattr(model.config, "model_type", None)
        targets, feedforward = settings.target_modules, settings.feedforward_modules
        if targets == "auto" or feedforward == "auto":
            if model_type not in TARGETS:
                raise ConfigError(
                    f"ia3.target_modules: auto does not know {model_summary(model)}; list "
                    "target_modules (keys, values, second feed-forward layer) and "
                    f"feedforward_modules (its linear layers: {', '.join(linear_suffixes(model))})"
                )
            if targets == "auto":
                targets = list(TARGETS[model_type])
            if feedforward == "auto":
                feedforward = [m for m in FEEDFORWARD[model_type] if m in targets]
        targets = self.resolve_targets(model, targets, "ia3.target_modules")
        stray = [m for m in feedforward if m not in targets]
        if stray:
            raise ConfigError(
                f"ia3.feedforward_modules: {', '.join(map(repr, stray))} must also be "
                f"in target_modules ({', '.join(targets)})"
            )
        return IA3Config(
            task_type=PEFT_TASK_TYPES.get(task_kind),
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=self.modules_to_save(model, settings.modules_to_save, task_kind),
        )


@hookimpl
def register_methods(register):
    register("ia3", Ia3Method())
