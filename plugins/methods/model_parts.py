"""Finding the parts of a transformers model that methods operate on, without a table per architecture.

A model with a task head looks the same from far enough away::

    LlamaForCausalLM                     BertForSequenceClassification
    ├── model            <- base model   ├── bert                <- base model (base_model_prefix)
    │   ├── embed_tokens                 │   ├── embeddings
    │   ├── layers       <- block stack  │   ├── encoder.layer   <- block stack
    │   └── norm         <- after stack  │   └── pooler          <- after stack
    └── lm_head          <- head         ├── dropout             (no parameters: ignored)
                                         └── classifier          <- head

- the *block stack* is the ``nn.ModuleList`` of same-class modules that holds the most parameters;
- the *head* is every top-level child with parameters that is not the base model;
- the modules *after the stack* are the base model's children registered after the one holding the
  stack (a final norm, a pooler): they see only the top block's output.

Image classifiers have the same shape (``MobileNetV2ForImageClassification``: ``mobilenet_v2`` with
the block stack ``layer`` and ``conv_1x1`` after it, head ``classifier``; ViT like BERT). A CNN's
blocks hold convolutions, not linear layers: their 1x1 convolutions are matrix products over the
channels at every pixel, and LoRA adapts them as it adapts a linear layer (depthwise 3x3
convolutions, one small filter per channel, are left alone).

BatchNorm (CNNs): its running statistics are buffers, not parameters, so no method's trainable
state carries them. Methods other than ``full`` call :func:`keep_batchnorm_statistics`, so that the
statistics stay the pretrained ones while training: the saved state then describes the tuned model
completely (a reloaded adapter, a resumed run and a federated round compute what was trained).
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from tunewright import UsageError, kinds

#: the task kinds the built-in methods tune (see ``Method.task_kinds``)
TEXT_KINDS = (kinds.CAUSAL_LM, kinds.SEQUENCE_CLASSIFICATION)
#: and image classifiers (CNNs and ViTs), for the methods that need nothing text-specific
TEXT_AND_IMAGE_KINDS = (*TEXT_KINDS, kinds.IMAGE_CLASSIFICATION)


def check_task_kind(method: str, task_kind: str, supported: tuple[str, ...] = TEXT_KINDS) -> None:
    if task_kind not in supported:
        raise UsageError(
            f"method {method!r}: cannot tune a model of task kind {task_kind!r} (it supports: "
            f"{', '.join(supported)})"
        )


#: the module that carries image features into a language model's embedding space, by the names
#: transformers' image-text models give it (Llava, Gemma 3, Mistral 3: multi_modal_projector;
#: Idefics 3, SmolVLM: connector)
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector")


def projector_names(model: nn.Module) -> list[str]:
    """Qualified names of an image-text model's projector (the outermost module named one of
    :data:`PROJECTOR_NAMES`); PEFT wraps the named module and trains it in full."""
    found = [
        name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in PROJECTOR_NAMES
    ]
    found = [name for name in found if not any(name.startswith(other + ".") for other in found)]
    if not found:
        raise UsageError(
            f"{type(model).__name__}: found no projector between the vision tower and the language "
            f"model (a module named {', '.join(PROJECTOR_NAMES)}); list the modules to train in full "
            "in the method's modules_to_save"
        )
    return found


def language_model(model: nn.Module) -> tuple[nn.Module, str]:
    """``(module, qualified name)`` of an image-text model's language model (its decoder)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    for name, module in model.named_modules():
        if decoder is not None and module is decoder:
            return decoder, name
    raise UsageError(
        f"{model_summary(model)}: could not find the language model of this "
        "image-text model (transformers' get_decoder())"
    )


def _linear_types() -> tuple[type, ...]:
    # GPT-2 style models use transformers' Conv1D, a linear layer with transposed weights.
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified name, ModuleList)`` of the model's transformer blocks."""
    best: tuple[str, nn.ModuleList, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[2]):
            best = (name, module, size)
    if best is None:
        raise UsageError(
            f"{type(model).__name__}: found no list of transformer blocks (an nn.ModuleList of "
            "layers of one class); this method supports models built from such a stack"
        )
    return best[0], best[1]


def base_model(model: nn.Module) -> nn.Module:
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, None) if prefix else None


def head_names(model: nn.Module) -> list[str]:
    """Top-level children with parameters other than the base model: ``lm_head``, ``classifier``,
    ``score`` (DistilBERT: ``pre_classifier`` and ``classifier``)."""
    base = base_model(model)
    names = [
        name
        for name, child in model.named_children()
        if child is not base and any(True for _ in child.parameters())
    ]
    if base is None or not names:
        raise UsageError(
            f"{type(model).__name__}: could not tell the task head from the base model (expected a "
            "transformers model with a head, such as *ForCausalLM or *ForSequenceClassification)"
        )
    return names


def head_is_tied(model: nn.Module) -> bool:
    """Whether the output head shares its weight with the input embeddings (SmolLM2, GPT-2)."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    return (
        inputs is not None
        and outputs is not None
        and getattr(outputs, "weight", None) is getattr(inputs, "weight", False)
    )


def after_stack_names(model: nn.Module) -> list[str]:
    """Qualified names of the base model's children with parameters that come after the stack."""
    stack_name, _ = block_stack(model)
    base = base_model(model)
    prefix = getattr(model, "base_model_prefix", "")
    if base is None or not stack_name.startswith(prefix + "."):
        return []
    holder = stack_name[len(prefix) + 1 :].split(".")[0]
    names, seen = [], False
    for name, child in base.named_children():
        if seen and any(True for _ in child.parameters()):
            names.append(f"{prefix}.{name}")
        seen |= name == holder
    return names


def linear_suffixes(model: nn.Module) -> list[str]:
    """Last name component of every linear layer inside the blocks, in model order:
    ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`` for Llama,
    ``query, key, value, dense`` for BERT."""
    stack_name, _ = block_stack(model)
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        if name.startswith(stack_name + ".") and isinstance(module, _linear_types()):
            seen.setdefault(name.rsplit(".", 1)[-1], None)
    return list(seen)


def pointwise_convolutions(model: nn.Module) -> list[str]:
    """Qualified names of the 1x1, ungrouped ``nn.Conv2d`` layers inside the blocks, in model order
    (MobileNetV2: every ``expand_1x1.convolution`` and ``reduce_1x1.convolution``)."""
    stack_name, _ = block_stack(model)
    return [
        name
        for name, module in model.named_modules()
        if name.startswith(stack_name + ".")
        and isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
    ]


def _always_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def keep_batchnorm_statistics(model: nn.Module) -> int:
    """Keep every BatchNorm layer in eval mode, whatever ``model.train()`` says: it normalises
    with, and keeps, its pretrained running statistics (its affine weights still train where the
    method makes them trainable). Returns how many layers it changed."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = types.MethodType(_always_eval, module)
            module.train(False)
            count += 1
    return count


def parameter_names_under(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Names of the parameters inside the modules named by ``prefixes``, one name per tensor.

    A tied weight is listed under the first selected name that reaches it (``lm_head.weight`` when
    only the head is selected, although ``named_parameters()`` would call it ``embed_tokens``)."""
    names, seen = [], set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen and any(name == p or name.startswith(p + ".") for p in prefixes):
            seen.add(id(param))
            names.append(name)
    return names


def model_summary(model: Any) -> str:
    return f"{type(model).__name__} ({getattr(getattr(model, 'config', None), 'model_type', '?')})"
