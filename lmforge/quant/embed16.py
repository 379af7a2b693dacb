"""Frozen embeddings stored in 16 bits and computed in the model's precision (QLoRA keeps
every weight it does not quantize in bfloat16):

    Embedding16   a lookup widens only the rows it picks
    Linear16      a head tied to that embedding widens one slice of the vocabulary at a time,
                  forward and backward, so the full-precision weight never exists at once

Both keep their 16-bit storage under `model.float()` or `.to(dtype)`; the dtype they compute
in follows the cast, as NF4Linear's does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError

STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
SLICE_NUMEL = 1 << 21  # weights widened at once by Linear16


class Stored16:
    """Mixin: `weight` stays in its 16-bit storage dtype; `compute_dtype` follows casts."""

    compute_dtype: torch.dtype
    weight: nn.Parameter

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True):
        stored = self.weight.data
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=self.weight.device))
        super()._apply(fn, recurse)
        if self.weight.dtype != stored.dtype:  # a dtype cast: keep the stored values as they were
            self.weight.data = stored.to(self.weight.device)
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        return self


class Embedding16(Stored16, nn.Embedding):
    """nn.Embedding whose frozen weight is stored in 16 bits; lookups return compute_dtype."""

    def forward(self, input: Tensor) -> Tensor:
        rows = F.embedding(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        return rows.to(self.compute_dtype)  # (..., d)


def _slices(weight: Tensor) -> list[slice]:
    """W's rows in slices of at most SLICE_NUMEL weights."""
    size = max(1, SLICE_NUMEL // weight.shape[1])
    return [slice(start, start + size) for start in range(0, weight.shape[0], size)]


class _WidenedLinear(torch.autograd.Function):
    """y = x Wᵀ + b with the 16-bit W widened one slice of rows at a time, forward and
    backward: autograd keeps the stored W, never a widened copy of it."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight)
        out = x.new_empty(*x.shape[:-1], weight.shape[0])  # (..., out)
        for rows in _slices(weight):
            b = None if bias is None else bias[rows].to(x.dtype)
            out[..., rows] = F.linear(x, weight[rows].to(x.dtype), b)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        (weight,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.new_zeros(*grad.shape[:-1], weight.shape[1])  # (..., in)
            for rows in _slices(weight):
                grad_x += grad[..., rows] @ weight[rows].to(grad.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)  # (out,)
        return grad_x, None, grad_bias


class Linear16(Stored16, nn.Linear):
    """nn.Linear whose frozen weight is stored in 16 bits, widened one output slice at a time."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.requires_grad:
            raise ConfigError(
                "a Linear16 head is stored in 16 bits and frozen; it cannot train (leave the "
                "embedding out of the trained parameters, or quantize without embedding_dtype)"
            )
        return _WidenedLinear.apply(x.to(self.compute_dtype), self.weight, self.bias)


def _stored(module: nn.Module) -> nn.Module:
    """The 16-bit twin of an nn.Embedding or nn.Linear, holding the very same Parameters."""
    with torch.device("meta"):  # nothing allocated: the parameters are the module's own
        if isinstance(module, nn.Embedding):
            twin = Embedding16(
                module.num_embeddings,
                module.embedding_dim,
                module.padding_idx,
                module.max_norm,
                module.norm_type,
                module.scale_grad_by_freq,
                module.sparse,
            )
        else:
            twin = Linear16(module.in_features, module.out_features, module.bias is not None)
            twin.bias = module.bias
    twin.weight = module.weight
    twin.compute_dtype = module.weight.dtype
    twin.train(module.training)
    return twin


def store_embeddings(model: nn.Module, dtype: str = "bfloat16") -> list[str]:
    """Store every nn.Embedding of `model`, and any linear layer sharing its weight (a tied
    head), in the 16-bit `dtype`, frozen. Returns the names of the modules changed."""
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(
            f"embedding_dtype {dtype!r} is unknown; choose from {sorted(STORAGE_DTYPES)}"
        )
    modules = dict(model.named_modules())
    embeddings = [
        n for n, m in modules.items() if isinstance(m, nn.Embedding) and not isinstance(m, Stored16)
    ]
    weights = {id(modules[n].weight): modules[n].weight for n in embeddings}
    heads = [
        n
        for n, m in modules.items()
        if isinstance(m, nn.Linear) and not isinstance(m, Stored16) and id(m.weight) in weights
    ]
    for name in embeddings + heads:
        model.set_submodule(name, _stored(modules[name]))
    for weight in weights.values():  # once per tensor: a tied head holds the same Parameter
        weight.requires_grad_(False)
        weight.data = weight.data.to(STORAGE_DTYPES[dtype])
    return embeddings + heads
