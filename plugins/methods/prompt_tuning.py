"""``prompt_tuning``: learnt virtual tokens put before every input, through PEFT.

Prompt tuning (https://arxiv.org/abs/2104.08691) keeps the whole model frozen and learns the
embeddings of ``num_virtual_tokens`` tokens that are prepended to every input::

    [p_1 … p_n] ++ embed(input_ids) ──► frozen model ──► logits (B, n + T, V) ──► (B, T, V)

PEFT returns a causal LM's logits for the virtual positions too; the applied model here drops them
(a forward hook), so that position ``t`` of the logits belongs to token ``t`` of the input, as with
every other method, and a task's metrics need not know about virtual tokens. The loss is PEFT's
(it includes predicting the first input token from the prompt). Generation is unaffected.

Nothing is added to the weights, so there is nothing to merge: :meth:`merge` refuses with a
:class:`tunewright.UsageError`. A prompt cannot be folded into weights (every layer attends to the
virtual tokens as to extra positions, which no change of a weight matrix reproduces), and the other
ways out are not plain models: feeding the prompt as ``inputs_embeds`` changes the exported
graph's inputs, and turning it into a precomputed KV cache only works for decoders and ties the
export to one cache layout. Train with ``lora`` or ``ia3`` when the result must be exported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunewright import Section, UsageError, hookimpl

from .peft_backed import PEFT_TASK_TYPES, PeftMethod

REFERENCE = "https://arxiv.org/abs/2104.08691"


class PromptTuningSettings(Section):
    """Prompt tuning: the power of scale for parameter-efficient prompt tuning
    (https://arxiv.org/abs/2104.08691)."""

    num_virtual_tokens: int = Field(
        20, ge=1, le=512, description="how many virtual tokens to learn"
    )
    init: Literal["random", "sample_vocab"] = Field(
        "sample_vocab",
        description="initial virtual token embeddings: random, or copies of randomly chosen "
        "vocabulary embeddings (which the paper found trains better)",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="further modules trained in full and saved with the prompt; the "
        "classification head is added by itself",
    )


class PromptTuningMethod(PeftMethod):
    name = "prompt_tuning"
    config_class = PromptTuningSettings
    reference = REFERENCE
    peft_type = "PROMPT_TUNING"

    def peft_config(self, model, settings, task_kind):
        from peft import PromptTuningConfig

        config = model.config
        return PromptTuningConfig(
            task_type=PEFT_TASK_TYPES[task_kind],
            num_virtual_tokens=settings.num_virtual_tokens,
            prompt_tuning_init=settings.init.upper(),
            modules_to_save=self.modules_to_save(model, settings.modules_to_save, task_kind),
            # PEFT reads these from the model config; passed explicitly for configs that name
            # them differently
            token_dim=getattr(config, "hidden_size", None),
            num_layers=getattr(config, "num_hidden_layers", None),
        )

    def apply(self, model, settings, task_kind):
        return _input_positions_only(super().apply(model, settings, task_kind))

    def load_folder(self, model, path, saved):
        # PeftModel.from_pretrained refuses is_trainable=True for prompt learning; wrapping with
        # the saved config and loading the weights gives the same model, ready to train on.
        from peft import get_peft_model, load_peft_weights, set_peft_model_state_dict

        saved.inference_mode = False
        peft_model = get_peft_model(model, saved)
        set_peft_model_state_dict(peft_model, load_peft_weights(str(path), device="cpu"))
        return _input_positions_only(peft_model)

    def merge(self, model):
        raise UsageError(
            "method 'prompt_tuning' keeps its learnt virtual tokens outside the weights, so it "
            "cannot be merged into a plain model for export; use the PEFT folder with PEFT, or "
            "train with lora, dora or ia3 to export a merged model"
        )


def _input_positions_only(peft_model):
    def drop_virtual_positions(module, args, kwargs, output):
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        logits = getattr(output, "logits", None)
        if inputs is None or logits is None or logits.dim() != 3:
            return output
        length = inputs.shape[1]
        if logits.shape[1] > length:
            output.logits = logits[:, -length:]  # (B, n + T, V) -> (B, T, V)
        return output

    peft_model.register_forward_hook(drop_virtual_positions, with_kwargs=True)
    return peft_model


@hookimpl
def register_methods(register):
    register("prompt_tuning", PromptTuningMethod())
