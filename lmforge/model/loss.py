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

A frozen head (every parameter-efficient method) needs no ∂W, so the vocabulary can be cut
instead of the rows, with the softmax normalised online as FlashAttention does over keys.
For each slice W_s of the vocabulary (all N rows at once; y is the target, m the running
maximum, z_y = h·W_y is known before the loop):

    z = h W_sᵀ                                  (N, V_s), the only logits alive
    m' = max(m, max z);  r = exp(m − m')         rescale what was summed under the old m
    e = exp(z − m'),  with the target's entry set to 0
    S ← S·r + Σ e        A ← A·r + e W_s          sums over every word but the target

    loss = m + log(S + exp(z_y − m)) − z_y
    ∂loss/∂h = A / S_all − (S / S_all) W_y        S_all = S + exp(z_y − m)

Keeping the target out of S and A gives p_y − 1 = −S / S_all without cancellation when the
model is sure of the target. The buffer is (N, V_s) with N·V_s ≤ 2²⁰, and W is read one slice
at a time: a head stored in 16 bits (a QLoRA model's tied embedding) is widened slice by
slice to the rows' precision, never as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def shift_labels(labels: Tensor, shift: int = 1) -> Tensor:
    """The target of each position: labels[:, t + shift], IGNORE_INDEX past the end. (B, T)."""
    return F.pad(labels[:, shift:], (0, shift), value=IGNORE_INDEX)


def causal_lm_loss(logits: Tensor, labels: Tensor, shift: int = 1) -> Tensor:
    """Next-token loss: position t predicts labels[t+shift] (1: the next token; a multi-token
    head j uses j); -100 is ignored. logits (B, T, V)."""
    V = logits.shape[-1]
    targets = shift_labels(labels, shift)  # (B, T)
    return cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


@dataclass(frozen=True)
class LossPlan:
    """How the fused head and loss run on a device: the dtype of their matrix products (the
    softmax and the sums are fp32 whatever it is) and the sizes of their pieces."""

    compute_dtype: torch.dtype  # dtype of the products h·Wᵀ, z·W and zᵀ·h
    chunk_rows: int = 256  # rows per piece of a trained head
    budget: int = 1 << 20  # logits per vocabulary slice of a frozen head
    traced: bool = False  # under torch.compile: h·Wᵀ then cross-entropy, fused by the compiler


# Chunk sizes per device type: small pieces stay in a CPU's caches; a GPU wants big products.
CHUNK_ROWS: dict[str, int] = {"cpu": 256, "cuda": 4096}
BUDGETS: dict[str, int] = {"cpu": 1 << 20, "cuda": 1 << 26}


def loss_plan(hidden: Tensor) -> LossPlan:
    """The one place where the head-and-loss path depends on the device: under autocast the
    products run in the autocast dtype (bf16 on CUDA: tensor cores, fp32 accumulation),
    otherwise in the hidden state's dtype (fp32 on a CPU, as fast there as anything).

    Under torch.compile the chunked autograd Functions would break the graph (their loops
    pick rows by value), so the compiled step takes the plain product and cross-entropy,
    which the compiler fuses into the graph; eager runs keep the chunks."""
    kind = hidden.device.type
    autocast = torch.is_autocast_enabled(kind)
    dtype = torch.get_autocast_dtype(kind) if autocast else hidden.dtype
    traced = torch.compiler.is_compiling()
    return LossPlan(dtype, CHUNK_ROWS.get(kind, 256), BUDGETS.get(kind, 1 << 20), traced)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, plan: LossPlan) -> Tensor:
        valid = targets != IGNORE_INDEX  # h (N, d), weight (V, d), targets (N,)
        safe = targets.masked_fill(~valid, 0)
        chunk, cd = plan.chunk_rows, plan.compute_dtype
        hc, wc = h.to(cd), weight.to(cd)  # the same tensors when nothing is cast
        grad_h = torch.empty_like(h)  # (N, d)
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None  # (V, d)
        total = h.new_zeros((), dtype=torch.float32)
        logits = hc.new_empty(min(chunk, len(h)), len(weight))  # (c, V): one buffer, reused
        for start in range(0, len(h), chunk):
            rows = slice(start, start + chunk)
            z = torch.mm(hc[rows], wc.t(), out=logits[: len(hc[rows])]).float()  # (c, V)
            torch.log_softmax(z, dim=-1, out=z)  # in place: a row is reduced before it is written
            picked = z.gather(1, safe[rows, None]).squeeze(1)  # (c,) log-probabilities
            total -= (picked * valid[rows]).sum()
            z.exp_()  # softmax
            z[torch.arange(len(z), device=z.device), safe[rows]] -= 1.0
            z.index_fill_(0, (~valid[rows]).nonzero().squeeze(1), 0.0)  # ignored rows: no grad
            z = z.to(cd)
            grad_h[rows] = z @ wc  # (c, d)
            if grad_w is None:
                continue
            if grad_w.dtype == cd:
                grad_w.addmm_(z.t(), hc[rows])  # (V, d)
            else:  # a 16-bit product per chunk, summed over the chunks in fp32
                grad_w.add_(torch.mm(z.t(), hc[rows]))
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


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, plan: LossPlan) -> Tensor:
        valid = targets != IGNORE_INDEX  # h (N, d), weight (V, d) frozen, targets (N,)
        safe = targets.masked_fill(~valid, 0)
        h, budget = hidden.to(plan.compute_dtype), plan.budget
        wide = torch.promote_types(h.dtype, torch.float32)  # softmax precision: fp32 at least
        w_y = weight[safe].to(wide)  # (N, d)
        z_y = (h.to(wide) * w_y).sum(1)  # (N,) the target's logit
        m = z_y.clone()  # running maximum, starting at the target's logit
        total = torch.zeros_like(z_y)  # Σ exp(z − m) over the words seen, target excluded
        acc = torch.zeros(h.shape, dtype=wide, device=h.device)  # Σ exp(z − m) W_v, (N, d)
        size = max(1, min(len(weight), budget // max(1, len(h))))
        buffer = h.new_empty(len(h), size)  # (N, V_s): one buffer, reused
        rows = torch.arange(len(h), device=h.device)
        for start in range(0, len(weight), size):
            w = weight[start : start + size].to(h.dtype)  # (V_s, d)
            z = torch.mm(h, w.t(), out=buffer[:, : len(w)]).to(wide)  # (N, V_s)
            new_m = torch.maximum(m, z.amax(dim=1))
            rescale = (m - new_m).exp_()  # (N,)
            z.sub_(new_m[:, None]).exp_()
            here = (safe >= start) & (safe < start + len(w))
            z[rows[here], safe[here] - start] = 0.0  # the target is counted apart
            total.mul_(rescale).add_(z.sum(dim=1))
            acc.mul_(rescale[:, None])
            if h.dtype == wide:
                acc.addmm_(z, w)
            else:  # a 16-bit product per slice, summed over the slices in fp32
                acc.add_(torch.mm(z.to(h.dtype), w).to(wide))
            m = new_m
        target = (z_y - m).exp_()  # (N,)
        everything = total + target
        sure = target >= total  # p_y ≥ ½: log(1 + S/e_y) keeps a tiny loss's digits
        losses = torch.where(sure, (total / target).log1p(), m + everything.log() - z_y)  # (N,)
        grad_h = acc.div_(everything[:, None]).sub_(w_y * (total / everything)[:, None])
        grad_h = grad_h.mul_(valid[:, None]).to(hidden.dtype)  # ignored rows: no gradient
        n = valid.sum()
        ctx.save_for_backward(grad_h, n)
        return (losses * valid).sum() / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, n = ctx.saved_tensors
        return grad_h * (grad_out / n).to(grad_h.dtype), None, None, None


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, plan: LossPlan | None = None, shift: int = 1
) -> Tensor:
    """Next-token loss of `hidden @ weight.T` without materialising the (B, T, V) logits.

    hidden (B, T, d), weight (V, d), labels (B, T) as for `causal_lm_loss`, which this equals
    in value and gradients up to float rounding. A trained weight goes by `plan.chunk_rows`
    rows at a time; a frozen one (no gradient) by vocabulary slices of at most `plan.budget`
    logits, and may be stored in another float dtype than `hidden` (see the module
    docstring). The plan defaults to `loss_plan(hidden)`: the device's, autocast's and
    torch.compile's. `shift` is the distance to the predicted token, as for `causal_lm_loss`."""
    plan = plan or loss_plan(hidden)
    targets = shift_labels(labels, shift)  # (B, T)
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    if plan.traced:
        cd = plan.compute_dtype
        logits = F.linear(h.to(cd), weight.to(cd)).float()  # (N, V)
        return F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE_INDEX)
    if not weight.requires_grad:
        return _FrozenHeadCrossEntropy.apply(h, weight, targets.reshape(-1), plan)
    return _LinearCrossEntropy.apply(h, weight, targets.reshape(-1), plan)
