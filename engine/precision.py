"""Training precision: bf16 frozen weights where the hardware multiplies bf16 fast.

Measured on the 2-core Zen 4 build machines (avx512_bf16): bf16 matrix products run about 4.5x
faster than fp32, and casting the frozen base to bf16 once beats autocast, which re-casts every
weight on every call. Trainable parameters stay fp32 so the optimizer's small updates are not
rounded away. Where the two meet:

- a trainable ``nn.Linear`` (LoRA's A and B, a new head) multiplies in its input's precision, its
  fp32 weight cast on the fly, as autocast would. Its input is then the very tensor the frozen layer
  beside it saved for backward; an fp32 copy would be saved again (for LoRA on every linear layer
  of SmolLM2-135M, 0.6 MB per token: 1.6 GB for a batch of 8 x 245 tokens) and cost a cast each way.
  PEFT's own cast of the input to the adapter's dtype is switched off for the same reason (its
  ``cast_input_dtype_enabled``, meant for callers that handle dtypes themselves);
- any other module that owns trainable parameters (a norm, IA3's scaling vectors, DoRA's magnitudes)
  gets its floating inputs cast to fp32 and its output cast back to the dtype they came in.

So frozen bf16 and trainable fp32 modules can follow each other in any order. What enters the
model is cast too: floating inputs (an image's pixels, embeddings passed in) are cast to the frozen
dtype at the model's door, as integer token ids become bf16 in a bf16 embedding table, so a task
need not know the precision. Labels keep their dtype (a regression target is not rounded).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@functools.cache
def cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(requested: str, device: torch.device | None = None) -> str:
    """``auto`` becomes ``bf16`` on CUDA with bf16 support and on CPUs with bf16 instructions."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def _cast_floats(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast_floats(v, dtype) for v in value]
    return value


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast every frozen parameter and buffer to ``dtype``; bridge modules that train.

    Returns the number of bridged modules. Modules with trainable parameters of their own keep
    all their own parameters as they are: a trainable ``nn.Linear`` multiplies in its input's
    dtype, any other gets floating inputs cast to the trainable dtype and returns its output in
    the dtype its input came in (see the module docstring). The model's own floating inputs, but
    ``labels``, are cast to ``dtype`` on every call.
    """
    _inputs_in(model, dtype)
    bridged = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        trainable = [p for p in own if p.requires_grad]
        if not trainable and hasattr(module, "cast_input_dtype_enabled"):
            # a PEFT tuner layer whose adapters are modules of their own (LoRA's A and B): they
            # are bridged one by one, so PEFT need not copy the input to their dtype first
            module.cast_input_dtype_enabled = False  # type: ignore[assignment]  # torch: a Tensor or Module
        if trainable:
            # a module that trains keeps all its own parameters in one dtype (a LayerNorm whose
            # bias trains needs its weight in fp32 too): it is bridged below instead
            if isinstance(module, torch.nn.Linear):
                module.forward = functools.partial(_linear_in_input_dtype, module)  # type: ignore[method-assign]
            else:
                _bridge(module, trainable[0].dtype)
            bridged += 1
            continue
        for param in own:
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            # position tables and rotary frequencies stay fp32: they are tiny and precision-bound
            if buffer.is_floating_point() and "inv_freq" not in name:
                setattr(module, name, buffer.to(dtype))
    return bridged


#: inputs a model compares its output with rather than computes from: they keep their dtype
_TARGETS = frozenset({"labels"})


def _inputs_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating inputs of ``model`` (pixels, ``inputs_embeds``...) to ``dtype`` on every
    call: a frozen first layer in bf16 (a convolution) would refuse fp32 pixels."""

    def before(mod, args, kwargs):
        return (
            _cast_floats(args, dtype),
            {k: v if k in _TARGETS else _cast_floats(v, dtype) for k, v in kwargs.items()},
        )

    model.register_forward_pre_hook(before, with_kwargs=True)


def _linear_in_input_dtype(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` computed in ``x``'s dtype; the gradient reaches the weight in its own dtype."""
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return torch.nn.functional.linear(x, module.weight.to(x.dtype), bias)


def _bridge(module: torch.nn.Module, param_dtype: torch.dtype) -> None:
    def before(mod, args, kwargs):
        floats = [
            a
            for a in list(args) + list(kwargs.values())
            if isinstance(a, torch.Tensor) and a.is_floating_point()
        ]
        mod._tunewright_input_dtype = floats[0].dtype if floats else None
        return _cast_floats(args, param_dtype), {
            k: _cast_floats(v, param_dtype) for k, v in kwargs.items()
        }

    def after(mod, args, kwargs, output):
        dtype = getattr(mod, "_tunewright_input_dtype", None)
        return output if dtype is None else _cast_floats(output, dtype)

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each block's activations in backward (``training.gradient_checkpointing``).

    transformers' non-reentrant checkpointing: it needs no input that requires grad, so adapters,
    prompt tuning and frozen layers work unchanged. Checked before the method is applied, so a
    model that cannot is refused before anything trains.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"training.gradient_checkpointing: {type(model).__name__} does not support gradient "
            "checkpointing (allowed: false for this model)"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
