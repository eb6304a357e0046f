"""``adapter``: bottleneck adapters after each transformer block (Houlsby et al. 2019).

Bottleneck adapters (https://arxiv.org/abs/1902.00751) are small two-layer networks inserted into a
frozen model. Here there is one per chosen block, on the block's output (the placement of Pfeiffer
et al., https://arxiv.org/abs/2005.00247, which needs nothing of the block's insides and so fits
Llama-like and BERT-like stacks alike)::

    block(x) = h  (B, T, C) ──────────────────────────────┐
               └──► down (C → m) ──► act ──► up (m → C) ──(+)──► h + up(act(down(h)))

``up`` starts at zero, so the applied model computes exactly what the base model does. The adapter
lives inside the block as the submodule ``bottleneck_adapter`` and runs from a forward hook on the
block, so parameter names of the base model do not change.

An adapter cannot be folded into the neighbouring weights as LoRA can: the activation between
``down`` and ``up`` is not linear, so ``h + up(act(down(h)))`` is no matrix product of ``h``.
:meth:`AdapterMethod.merge` therefore returns the base transformers model with the adapters
permanently inside (the same modules and hooks, trainable flags cleared): exporters that trace the
forward pass (``torch.onnx.export``, optimum's ``onnx_export_from_model``) see them;
``save_pretrained`` + ``from_pretrained`` of that model would drop them, and so would an exporter
that rebuilds the model from its saved files (onnxruntime-genai's model builder). Such a model says
so: ``model.tunewright_method["weights_only"]`` is ``False``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from tunewright import ConfigError, Section, UsageError, hookimpl, kinds

from . import state_files
from .model_parts import TEXT_KINDS, block_stack, check_task_kind, head_names, parameter_names_under

REFERENCE = "https://arxiv.org/abs/1902.00751"
MODULE_NAME = "bottleneck_adapter"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class AdapterSettings(Section):
    """Bottleneck adapters: parameter-efficient transfer learning for NLP
    (https://arxiv.org/abs/1902.00751)."""

    reduction_factor: int = Field(
        16, ge=1, description="bottleneck size = hidden size / reduction_factor (at least 1)"
    )
    size: int | None = Field(
        None, ge=1, description="bottleneck size in units; when set, reduction_factor is ignored"
    )
    # gelu, not relu, by default: while `up` is still zero only `up` gets a gradient, through
    # act(down(h)); a relu unit that is off for every token gets none, ever (seen on small models).
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "gelu", description="non-linearity between the down and up projections"
    )
    layers: Literal["all"] | list[int] = Field(
        "all",
        description="blocks that get an adapter, by index from 0; negative indices count "
        "from the top (-1 is the last block); all: every block",
    )


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with ``up`` initialised to zero (an identity at the start)."""

    def __init__(
        self,
        hidden: int,
        bottleneck: int,
        activation: str,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck, dtype=dtype, device=device)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden, dtype=dtype, device=device)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, T, m) -> (B, T, C)
        return hidden + self.up(self.act(self.down(hidden)))

    def after_block(self, block: nn.Module, args: tuple, output):
        """Forward hook of the block: a Llama block returns a tensor, a BERT block a tuple whose
        first item is the hidden states."""
        if isinstance(output, torch.Tensor):
            return self(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (self(output[0]), *output[1:])
        raise UsageError(
            f"adapter: cannot tell the hidden states in the output of "
            f"{type(block).__name__} ({type(output).__name__})"
        )


def _hidden_size(model: nn.Module) -> int:
    config = model.config
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UsageError(
        f"adapter: cannot find the hidden size in the config of {type(model).__name__}"
    )


def _chosen_layers(layers, count: int) -> list[int]:
    if layers == "all":
        return list(range(count))
    chosen = []
    for index in layers:
        if not -count <= index < count:
            raise ConfigError(
                f"adapter.layers: {index} is not a block of this model; it has "
                f"{count} (0..{count - 1}, or -{count}..-1 from the top)"
            )
        chosen.append(index % count)
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"adapter.layers: {layers} names a block twice")
    return sorted(chosen)


class AdapterMethod:
    name = "adapter"
    config_class = AdapterSettings
    reference = REFERENCE
    task_kinds = TEXT_KINDS

    def apply(self, model, settings, task_kind):
        check_task_kind(self.name, task_kind, self.task_kinds)
        settings = settings if settings is not None else AdapterSettings()
        _, blocks = block_stack(model)
        if any(hasattr(block, MODULE_NAME) for block in blocks):
            raise UsageError(
                "adapter: the model has adapters already; apply a method to a plain base model once"
            )
        hidden = _hidden_size(model)
        bottleneck = settings.size or max(1, hidden // settings.reduction_factor)
        reference = next(blocks.parameters())
        model.requires_grad_(False)
        for index in _chosen_layers(settings.layers, len(blocks)):
            block = blocks[index]
            adapter = BottleneckAdapter(
                hidden,
                bottleneck,
                settings.activation,
                dtype=reference.dtype,
                device=reference.device,
            )
            block.add_module(MODULE_NAME, adapter)
            block.register_forward_hook(adapter.after_block)
        trainable = [name for name, _ in model.named_parameters() if f".{MODULE_NAME}." in name]
        if task_kind in kinds.CLASSIFICATION_KINDS:
            trainable += parameter_names_under(model, head_names(model))
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in trainable:
            params[name].requires_grad_(True)
        model.tunewright_method = {
            "method": self.name,
            "task_kind": task_kind,
            "settings": settings.model_dump(mode="json"),
            "trainable": trainable,
            "weights_only": False,  # save_pretrained alone does not capture the adapters
        }
        return model

    def _record(self, model) -> dict:
        record = getattr(model, "tunewright_method", None)
        if not record or record.get("method") != self.name:
            raise UsageError("adapter: expects the model that apply() returned")
        return record

    def trainable_state(self, model):
        return state_files.snapshot(model, self._record(model)["trainable"])

    def load_trainable_state(self, model, state):
        state_files.load_named(model, state, self._record(model)["trainable"], self.name)

    def save(self, model, path):
        record = self._record(model)
        state_files.write(path, record, self.trainable_state(model))

    def load(self, model, path, settings, task_kind):
        """Apply the settings saved at ``path`` (they win over ``settings``) and load the state."""
        check_task_kind(self.name, task_kind, self.task_kinds)
        record, state = state_files.read(path, self.name, task_kind)
        model = self.apply(model, AdapterSettings.model_validate(record["settings"]), task_kind)
        self.load_trainable_state(model, state)
        return model

    def merge(self, model):
        """The same model with the adapters kept inside: they cannot be folded (see the module
        docstring). Nothing is left trainable."""
        self._record(model)
        model.requires_grad_(False)
        return model


@hookimpl
def register_methods(register):
    register("adapter", AdapterMethod())
