"""``full``: every parameter trains (full fine-tuning).

The baseline the parameter-efficient methods are measured against. Its trainable state is the
whole state dict, so a federated job with ``full`` sends the whole model every round; it saves as
an ordinary Hugging Face folder (``save_pretrained``) that needs no merge.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunewright import UsageError, hookimpl

from .model_parts import TEXT_AND_IMAGE_KINDS, check_task_kind

REFERENCE = "https://arxiv.org/abs/1810.04805"  # BERT: fine-tuning all pretrained parameters


class FullMethod:
    name = "full"
    config_class = None
    reference = REFERENCE
    task_kinds = TEXT_AND_IMAGE_KINDS

    def apply(self, model, settings, task_kind):
        check_task_kind(self.name, task_kind, self.task_kinds)
        model.requires_grad_(True)
        return model

    def trainable_state(self, model):
        # Tied weights appear under both names, as in state_dict(); load_state_dict copies both.
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def load_trainable_state(self, model, state):
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UsageError(
                f"method 'full': the state does not fit this model (missing: "
                f"{', '.join(result.missing_keys[:5]) or 'none'}; unexpected: "
                f"{', '.join(result.unexpected_keys[:5]) or 'none'})"
            )

    def save(self, model, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(path), safe_serialization=True)

    def load(self, model, path, settings, task_kind):
        """Load the weights that :meth:`save` wrote into ``model`` (kept on its device and dtype)."""
        from safetensors.torch import load_file

        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise UsageError(f"{path}: not a saved 'full' model (no model.safetensors)")
        state = {}
        for name in files:
            state.update(load_file(str(path / name)))
        model = self.apply(model, settings, task_kind)
        result = model.load_state_dict(state, strict=False)
        # save_pretrained leaves out a tied weight (lm_head.weight); it shares the saved tensor
        current = model.state_dict()
        saved = {current[k].data_ptr() for k in state if k in current}
        missing = [k for k in result.missing_keys if current[k].data_ptr() not in saved]
        if missing or result.unexpected_keys:
            raise UsageError(
                f"{path}: the saved weights do not fit this model (missing: "
                f"{', '.join(missing[:5]) or 'none'}; unexpected: "
                f"{', '.join(result.unexpected_keys[:5]) or 'none'})"
            )
        return model

    def merge(self, model):
        return model


@hookimpl
def register_methods(register):
    register("full", FullMethod())
