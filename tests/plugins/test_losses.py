"""plugins/tasks/losses.py: cross-entropy in fp32 blocks of rows, equal to F.cross_entropy."""

from __future__ import annotations

import pytest
import torch

from tunewright.plugins.tasks import losses
from tunewright.plugins.tasks.losses import cross_entropy_sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 64])  # one block, a partial last block, many blocks
def test_the_loss_and_its_gradient_are_those_of_cross_entropy(dtype, rows, monkeypatch):
    monkeypatch.setattr(
        losses, "BLOCK_BYTES", 3 * 4 * 1000
    )  # 3 rows of a 1,000-word vocabulary per block
    torch.manual_seed(0)
    logits = (torch.randn(rows, 1000) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (rows,))
    expected = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected * 0.5, logits)
    loss = cross_entropy_sum(logits, targets)
    (grad,) = torch.autograd.grad(loss * 0.5, logits)  # the upstream gradient is applied
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert grad.dtype == dtype
    torch.testing.assert_close(
        grad, expected_grad, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-7
    )


def test_fp32_logits_are_not_changed_by_backward():
    torch.manual_seed(0)
    logits = torch.randn(5, 50, requires_grad=True)
    before = logits.detach().clone()
    cross_entropy_sum(logits, torch.randint(0, 50, (5,))).backward()
    assert torch.equal(logits.detach(), before)
    assert torch.allclose(
        logits.grad.sum(1), torch.zeros(5), atol=1e-6
    )  # softmax - onehot sums to 0 per row


def test_no_scored_position_is_a_zero_loss_with_a_zero_gradient():
    logits = torch.randn(0, 50, requires_grad=True)
    loss = cross_entropy_sum(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.shape == (0, 50)


def test_bad_shapes_and_targets_are_refused():
    with pytest.raises(ValueError, match=r"logits \(K, V\) and targets \(K,\)"):
        cross_entropy_sum(torch.randn(2, 3, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\), got 0 to 5"):
        cross_entropy_sum(torch.randn(2, 5), torch.tensor([0, 5]))


def test_no_full_size_fp32_tensor_is_kept_for_backward():
    logits = torch.randn(64, 4000, dtype=torch.bfloat16, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        cross_entropy_sum(logits, torch.randint(0, 4000, (64,)))
    assert any(
        t.dtype == torch.bfloat16 and t.shape == (64, 4000) for t in kept
    )  # the logits themselves
    assert all(
        t.dtype != torch.float32 or t.numel() <= 64 for t in kept
    )  # and one fp32 lse per row
