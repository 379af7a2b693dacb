"""Per-token log-probabilities of the labelled tokens, and the reference policy.

Every alignment objective scores tokens a model produced or was shown: log π(y_t | y_<t) at
each labelled position (the reply; `-100` elsewhere). The call runs with the model's head
taken out, so the model returns its final hidden states h (B, T, d) and the (B, T, V) logits
are never built; the head is then applied to the labelled rows only:

    h = model(ids)  with lm_head → Identity                 (B, T, d), any model or wrapper
    rows  h[b, t-1] for every labelled t                     (N, d), N = reply tokens
    log π(y_t) = z_y − logsumexp(z),  z = h W_headᵀ / τ       chunk by chunk, (c, V) alive

The backward pass recomputes each chunk's logits rather than keeping them:

    ∂/∂z = g · (onehot(y) − softmax(z))        ∂h = (∂/∂z) W        ∂W = (∂/∂z)ᵀ h

so a step holds one (c, V) buffer instead of (N, V) logits and their softmax. The same hidden
states serve a value head or a reward head (`final_hidden`).

The reference policy π_ref of DPO's and PPO's KL terms is the policy as it started: the
starting values of its trainable tensors, swapped in for a no-grad call (`Reference`). With a
delta method that is a copy of the delta alone — a fresh LoRA's B = 0, so π_ref is the base
with the delta disabled — and no second copy of the base weights; with full fine-tuning it
is one copy of every weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.host import host_for
from lmforge.model.loss import IGNORE_INDEX
from lmforge.model.targets import replace_module

CHUNK_ROWS = 256  # rows of logits alive at once in the fused head


@contextlib.contextmanager
def head_removed(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block `model(...)` returns its final hidden states (B, T, d) as `.logits`;
    yields the head that was taken out."""
    plain = host_for(model).plain
    head = replace_module(plain, "lm_head", nn.Identity())
    try:
        yield head
    finally:
        replace_module(plain, "lm_head", head)


def final_hidden(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None
) -> tuple[Tensor, nn.Module]:
    """The final hidden states (B, T, d) of a call, and the model's head."""
    with head_removed(model) as head:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits, head


class _HeadLogProbs(torch.autograd.Function):
    """log softmax(h Wᵀ)[y] for each row, chunk by chunk (see the module docstring)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, y: Tensor, chunk: int) -> Tensor:
        wide = torch.promote_types(h.dtype, torch.float32)  # sums in fp32 at least
        out = h.new_empty(len(h), dtype=wide)  # h (N, d), weight (V, d), y (N,)
        lse = torch.empty_like(out)
        for start in range(0, len(h), chunk):
            rows = slice(start, start + chunk)
            z = (h[rows] @ weight.to(h.dtype).t()).to(wide)  # (c, V)
            lse[rows] = torch.logsumexp(z, dim=-1)
            out[rows] = z.gather(1, y[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(h, weight, y, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, weight, y, lse = ctx.saved_tensors
        w, wide = weight.to(h.dtype), lse.dtype
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=wide) if ctx.needs_input_grad[1] else None
        for start in range(0, len(h), ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            z = (h[rows] @ w.t()).to(wide)  # (c, V), recomputed
            g = grad[rows].to(wide)
            dz = (z - lse[rows, None]).exp_().mul_(-g[:, None])  # −g · softmax
            dz[torch.arange(len(dz), device=dz.device), y[rows]] += g  # + g · onehot
            if grad_h is not None:
                grad_h[rows] = (dz.to(h.dtype) @ w).to(h.dtype)  # (c, d)
            if grad_w is not None:
                grad_w.addmm_(dz.t(), h[rows].to(wide))  # (V, d)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None


def _plain_linear(head: nn.Module) -> bool:
    return isinstance(head, nn.Linear) and head.bias is None and not head._forward_hooks


def head_logprobs(head: nn.Module, h: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(head(h) / τ)[y] for rows h (N, d) and targets y (N,): float32 (N,).

    A bias-free linear head goes through the chunked function; any other head (a LoRA on the
    head, a 16-bit head) is called on the rows and its logits normalised."""
    h = h if temperature == 1.0 else h / temperature
    if _plain_linear(head):
        return _HeadLogProbs.apply(h, head.weight, y, CHUNK_ROWS)
    logits = head(h).float()  # (N, V)
    return logits.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def scored_rows(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mask of the scored positions (B, T), their targets): position t ≥ 1 is scored when
    labels[t] is not -100, and is predicted by the hidden state at t − 1."""
    mask = labels != IGNORE_INDEX
    mask[:, 0] = False  # nothing predicts the first token
    return mask, labels[mask]


def logprobs_from_hidden(
    hidden: Tensor, head: nn.Module, labels: Tensor, temperature: float = 1.0
) -> Tensor:
    """(B, T) float32: log π(labels[t] | ...) at the scored positions, 0 elsewhere."""
    mask, targets = scored_rows(labels)
    before = F.pad(mask[:, 1:], (0, 1), value=False)  # (B, T): the rows that predict them
    logp = head_logprobs(head, hidden[before], targets, temperature)  # (N,)
    out = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(mask, logp)


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token log-probabilities (B, T) of the labelled tokens under `model`."""
    hidden, head = final_hidden(model, input_ids, attention_mask)
    return logprobs_from_hidden(hidden, head, labels, temperature)


def sequence_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Σ_t log π(y_t | y_<t) over each row's labelled tokens: (B,) float32."""
    ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
    return token_logprobs(model, ids, mask, labels).sum(-1)


def scored_counts(labels: Tensor) -> Tensor:
    """Scored tokens per row (B,)."""
    return scored_rows(labels)[0].sum(-1)


class Reference:
    """π_ref: the model's trainable tensors as they were when this was made.

    `with reference.active(): model(...)` computes with those values (no gradients), then the
    current ones are put back. Only trainable tensors are kept, so with a delta method the
    cost is a copy of the delta."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        params = dict(self.model.named_parameters())
        current: dict[str, Tensor] = {}
        try:
            with torch.no_grad():
                for name, saved in self.saved.items():
                    p = params[name]
                    if saved.device != p.device:  # the loop moved the model after we were made
                        saved = self.saved[name] = saved.to(p.device)
                    current[name], p.data = p.data, saved
                yield
        finally:
            for name, data in current.items():
                params[name].data = data
