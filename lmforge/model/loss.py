"""Next-token cross-entropy that touches the (N, V) logits as few times as possible.

For a vocabulary of tens of thousands of tokens the logits are the largest
tensor of a training step, so the loss is written to pass over them once
forward and once backward:

    forward   logp = log_softmax(z)               one (N, V) buffer, kept for backward
              loss = -Σ_valid logp[i, y_i] / n
    backward  ∂loss/∂z = (softmax(z) − onehot(y)) · g / n   written over logp in place

Shifting the labels rather than the logits (position t predicts token t+1)
avoids copying the logits, and computing the gradient in the saved buffer
avoids the full-size zero tensor that slicing and F.cross_entropy's backward
would allocate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:  # (N, V) float, (N,)
        logp = torch.log_softmax(logits, dim=-1)  # (N, V)
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        n = valid.sum()
        ctx.save_for_backward(logp, safe, valid, n)
        return -(logp.gather(1, safe[:, None]).squeeze(1) * valid).sum() / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        logp, safe, valid, n = ctx.saved_tensors
        grad = logp.exp_()  # softmax, over the saved buffer
        grad[torch.arange(len(safe), device=grad.device), safe] -= 1.0
        return grad.mul_((valid * (grad_out / n)).to(grad.dtype)[:, None]), None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over targets that are not IGNORE_INDEX; logits (N, V), targets (N,)."""
    if not torch.is_grad_enabled() or not logits.requires_grad:
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    return _CrossEntropy.apply(logits.float(), targets)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token loss: position t predicts labels[t+1]; -100 is ignored. logits (B, T, V)."""
    V = logits.shape[-1]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
    return cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
