"""BitFit: train the bias terms only (https://arxiv.org/abs/2106.10199).

A third-party plugin, written only against tunewright's public names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from tunewright import Section, UsageError, hookimpl

HEAD_NAMES = ("classifier", "score", "lm_head")


class BitFitSettings(Section):
    train_head: bool = Field(True, description="also train the task head (classifier / score)")


class BitFit:
    config_class = BitFitSettings
    reference = "https://arxiv.org/abs/2106.10199"

    def _trains(self, name: str, settings: BitFitSettings, task_kind: str) -> bool:
        if name.endswith(".bias"):
            return True
        in_head = name.split(".")[0] in HEAD_NAMES
        return settings.train_head and in_head and task_kind == "sequence_classification"

    def apply(self, model, settings, task_kind):
        settings = settings or BitFitSettings()
        trained = 0
        for name, param in model.named_parameters():
            param.requires_grad = self._trains(name, settings, task_kind)
            trained += param.requires_grad
        if trained == 0:
            raise UsageError(
                "method: bitfit: the model has no bias terms to train "
                "(Llama-style models have none; use lora or adapter)"
            )
        return model

    def trainable_state(self, model):
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, model, state):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save(self, model, path: Path):
        state = {
            k: v.to("cpu", torch.float32).contiguous()
            for k, v in self.trainable_state(model).items()
        }
        save_file(state, str(Path(path) / "bitfit.safetensors"))

    def load(self, model, path: Path, settings, task_kind):
        model = self.apply(model, settings, task_kind)
        self.load_trainable_state(model, load_file(str(Path(path) / "bitfit.safetensors")))
        return model

    def merge(self, model):
        for param in model.parameters():
            param.requires_grad = False
        return model


@hookimpl
def register_methods(register):
    register("bitfit", BitFit())
