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

When training, the model goes one step further and fuses the head with the loss
(`linear_cross_entropy`), so the (N, V) logits never exist at once. The loss is the
last operation of the step, so its gradient is known in the forward pass up to the
scalar that backward brings; each chunk of rows is projected, scored and turned into
its gradients before the next chunk is projected:

    for rows c in chunks(N):      z = h_c Wᵀ                     (c, V), the only logits alive
                                  z ← log_softmax(z)             in place
                                  loss −= Σ z[y]
                                  z ← exp(z) − onehot(y)         in place: ∂loss/∂logits
                                  ∂h_c = z W      ∂W += zᵀ h_c   (∂W only if W trains)
    backward                      ∂h · g/n, ∂W · g/n

Same FLOPs as head + loss, one (c, V) buffer, reused by every chunk, instead of two or three
(N, V) ones.
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


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        valid = targets != IGNORE_INDEX  # h (N, d), weight (V, d), targets (N,)
        safe = targets.masked_fill(~valid, 0)
        grad_h = torch.empty_like(h)  # (N, d)
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None  # (V, d)
        total = h.new_zeros((), dtype=torch.float32)
        logits = h.new_empty(min(chunk, len(h)), len(weight))  # (c, V): one buffer, reused
        for start in range(0, len(h), chunk):
            rows = slice(start, start + chunk)
            z = torch.mm(h[rows], weight.t(), out=logits[: len(h[rows])]).float()  # (c, V)
            torch.log_softmax(z, dim=-1, out=z)  # in place: a row is reduced before it is written
            picked = z.gather(1, safe[rows, None]).squeeze(1)  # (c,) log-probabilities
            total -= (picked * valid[rows]).sum()
            z.exp_()  # softmax
            z[torch.arange(len(z), device=z.device), safe[rows]] -= 1.0
            z.index_fill_(0, (~valid[rows]).nonzero().squeeze(1), 0.0)  # ignored rows: no grad
            z = z.to(h.dtype)
            grad_h[rows] = z @ weight  # (c, d)
            if grad_w is not None:
                grad_w.addmm_(z.t(), h[rows])  # (V, d)
        n = valid.sum()
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else h.new_empty(0), n)
        ctx.has_grad_w = grad_w is not None
        return total / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w, n = ctx.saved_tensors
        scale = grad_out / n
        return (
            grad_h * scale.to(grad_h.dtype),
            grad_w * scale.to(grad_w.dtype) if ctx.has_grad_w else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, chunk_rows: int = 256
) -> Tensor:
    """Next-token loss of `hidden @ weight.T` without materialising the (B, T, V) logits.

    hidden (B, T, d), weight (V, d), labels (B, T) as for `causal_lm_loss`, which this equals
    in value and gradients up to float rounding."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    return _LinearCrossEntropy.apply(h, weight, targets.reshape(-1), chunk_rows)
