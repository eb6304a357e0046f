"""Attention for training short sequences on a CPU: eager attention without its copies.

transformers' eager attention (``eager_attention_forward`` of Llama and the models that copy it)
materialises each key-value head once per query head it serves (``repeat_kv``: three copies of
keys and values for SmolLM2's 9 query and 3 key-value heads, and a sum of three in backward),
scales and masks the scores in two passes, and takes the softmax in fp32 and casts it back (a
further pass each way over the ``heads x T x T`` scores). :func:`grouped_attention` computes the
same thing with the query heads of each key-value head stacked into one matrix product against
the shared keys, the scaling and the mask in one ``add``, and the softmax in the scores' dtype
(the CPU kernel accumulates bf16 in fp32 and rounds once, as the cast back did). In fp32 it gives
eager's figures. How much faster it is than eager and SDPA, and where: bench/README.md, "Where the
code's choices come from".

It is registered with transformers' public ``AttentionInterface`` (and eager's additive mask with
``AttentionMaskInterface``) under :data:`GROUPED`; a call with an argument whose meaning it does not
know (Gemma's ``softcap``, attention sinks) goes to the model's own eager attention instead.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

GROUPED = "tunewright_grouped"

#: keyword arguments the decoder layers pass along that eager attention ignores too (the mask
#: carries causality and any sliding window; the rest are for the cache or flash kernels)
_IGNORED = frozenset(
    {
        "position_ids",
        "sliding_window",
        "cache_position",
        "past_key_value",
        "past_key_values",
        "use_cache",
        "output_attentions",
        "is_causal",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    }
)


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention for ``query (B, H, T, D)`` and ``key``/``value (B, KV, S, D)``, ``H = G * KV``:
    returns ``(B, T, H, D)`` outputs and ``(B, H, T, S)`` weights, as ``eager_attention_forward``."""
    if any(given is not None for name, given in kwargs.items() if name not in _IGNORED):
        return _models_eager(module)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    batch, heads, length, dim = query.shape
    kv_heads, source = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scaling = dim**-0.5 if scaling is None else scaling
    # query head h = kv * groups + g attends with key-value head kv (repeat_kv's order)
    scores = torch.matmul(
        query.reshape(batch, kv_heads, groups * length, dim), key.transpose(-1, -2)
    )
    scores = scores.view(batch, kv_heads, groups, length, source)
    if attention_mask is not None:  # (B, 1, T, S) additive
        scores = torch.add(attention_mask[:, :, None, :, :source], scores, alpha=scaling)
    else:
        scores = scores * scaling
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights.view(batch, kv_heads, groups * length, source), value)
    output = output.view(batch, heads, length, dim).transpose(1, 2).contiguous()
    return output, weights.view(batch, heads, length, source)


def _models_eager(module: torch.nn.Module):
    """The eager attention of the module's own modeling file (what ``eager`` would have run)."""
    modeling = sys.modules.get(type(module).__module__)
    function = getattr(modeling, "eager_attention_forward", None)
    if function is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    return function


def register() -> None:
    """Make :data:`GROUPED` a name ``set_attn_implementation`` takes (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED, grouped_attention)
    AttentionMaskInterface.register(GROUPED, eager_mask)


def prefer_cpu_attention(model: PreTrainedModel, max_length: int) -> str | None:
    """On a CPU, train sequences of up to 512 tokens with :func:`grouped_attention` rather than SDPA.

    Returns the implementation set, or None where the model keeps its own: on CUDA, for longer
    sequences (SDPA does not materialise the ``T x T`` scores), for a model that was not loaded
    with SDPA (a choice of the user's or the model's), and for an architecture that cannot switch.
    The measurements behind the switch: bench/README.md, "Where the code's choices come from".
    """
    if torch.cuda.is_available() or max_length > 512:
        return None
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return None
    if not getattr(model, "_supports_attention_backend", False):
        return None  # an architecture that cannot switch (BERT in transformers 4.57 says so loudly)
    register()
    try:
        model.set_attn_implementation(GROUPED)
    except (ValueError, AttributeError):  # an architecture without the attention interface
        return None
    return GROUPED
