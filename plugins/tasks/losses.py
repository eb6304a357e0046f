"""Cross-entropy over a large vocabulary, a few rows of logits at a time.

``F.cross_entropy(logits.float(), targets)`` on the scored positions of a chat batch makes four
full-size fp32 tensors: the upcast, the log-softmax kept for backward, the zeros its backward
scatters into and the gradient (for eight SmolLM2 conversations, 1,232 x 49,152: 242 MB each, each
a fresh allocation faulted in page by page), then casts the gradient back.
Here each block of rows is upcast on its own, small enough to stay in cache and to be reused by
the allocator: forward keeps the logits in their own dtype (half an fp32 copy, in bf16) and each
row's log-sum-exp; backward writes ``softmax - onehot`` straight into one gradient of the
logits' dtype. The arithmetic is fp32 (``exp(x - logsumexp(x))`` for the softmax), so the loss
equals ``F.cross_entropy``'s to rounding.
"""

from __future__ import annotations

import torch

#: fp32 bytes of one block of rows on a CPU, about a core's L2 (block sizes measured against
#: F.cross_entropy: bench/README.md, "Where the code's choices come from")
BLOCK_BYTES = 2**20
#: on an accelerator each block costs kernel launches rather than cache misses: far fewer, larger
#: blocks (not measured)
ACCELERATOR_BLOCK_BYTES = 256 * 2**20


def _rows_per_block(logits: torch.Tensor) -> int:
    budget = BLOCK_BYTES if logits.device.type == "cpu" else ACCELERATOR_BLOCK_BYTES
    return max(1, budget // (4 * max(1, logits.shape[1])))


class _BlockwiseCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = _rows_per_block(logits)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], rows):
            stop = start + rows
            block = logits[start:stop].float()
            lse[start:stop] = block_lse = torch.logsumexp(block, dim=1)
            total += block_lse.sum() - block.gather(1, targets[start:stop, None]).sum()
        ctx.save_for_backward(logits, targets, lse)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        rows = _rows_per_block(logits)
        for start in range(0, logits.shape[0], rows):
            stop = start + rows
            # a new fp32 block, never a view of the saved logits (which are fp32 already in an fp32 run)
            probabilities = logits[start:stop].float() - lse[start:stop, None]
            probabilities.exp_()
            probabilities.scatter_add_(
                1,
                targets[start:stop, None],
                probabilities.new_full((probabilities.shape[0], 1), -1.0),
            )
            grad[start:stop] = probabilities.mul_(grad_total)
        return grad, None


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, reduction="sum")`` for ``(K, V)`` logits and
    ``(K,)`` class indices (none ignored), in fp32 blocks of rows; the gradient has the logits' dtype."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy_sum: logits (K, V) and targets (K,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(
            f"cross_entropy_sum: targets must lie in [0, {logits.shape[1]}), got "
            f"{int(targets.min())} to {int(targets.max())}"
        )
    return _BlockwiseCrossEntropy.apply(logits, targets)
