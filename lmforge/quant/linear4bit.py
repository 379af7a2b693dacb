"""NF4Linear: a frozen linear layer whose weight lives in 4 bits (format: nf4.py).

The forward rebuilds Ŵ from the packed codes and multiplies; nothing weight-sized is cached
between steps. The backward needs Ŵ again for the input gradient: it takes the scratch buffer
as it is when that still holds this layer's unchanged Ŵ (the last layer of each size in a
block that gradient checkpointing has just recomputed), and rebuilds it otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.quant.nf4 import (
    DQ_BLOCKSIZE,
    DoubleQuant,
    Quantized4bit,
    byte_table,
    check_settings,
    double_dequantize,
    expand_4bit,
    held_weight,
    quantize_4bit,
)


class _DequantLinear(torch.autograd.Function):
    """y = x Ŵᵀ + b with Ŵ rebuilt in forward and, unless its scratch buffer still holds it,
    again in backward: never saved in the graph."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, bias: Tensor | None, layer: NF4Linear) -> Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(reuse=True), bias)  # (..., out)

    @staticmethod
    @torch.autograd.function.once_differentiable  # Ŵ lives in a scratch buffer, not the graph
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = ctx.layer.dequantize(reuse=True, held=True)  # (out, in)
            grad_x = grad @ weight.to(grad.dtype)  # (..., in)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)  # (out,)
        return grad_x, grad_bias, None


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight lives in 4 bits (see the module docstring).

    Buffers: `qweight` (⌈out·in/2⌉,) uint8, and `absmax` (n_blocks,) fp32 or, with double
    quantization, `absmax_codes` uint8, `absmax_scale` fp32 and `absmax_offset` (1,) fp32.
    The bias (if any) is a frozen float parameter. `compute_dtype` is the float dtype the
    layer computes in (its weight's original dtype); inputs of another dtype are cast to it
    and the output cast back. The forward dequantizes on the fly; gradients reach the input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        quant_type: str = "nf4",
        double_quant: bool = True,
        blocksize: int = 64,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_settings(quant_type, blocksize)
        if in_features <= 0 or out_features <= 0:
            raise ConfigError(f"NF4Linear needs positive sizes, got {in_features}→{out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.quant_type, self.blocksize, self.double_quant = quant_type, blocksize, double_quant
        self.compute_dtype = compute_dtype
        n = in_features * out_features
        n_blocks = -(-n // blocksize)
        self.register_buffer("qweight", torch.zeros((n + 1) // 2, dtype=torch.uint8, device=device))
        if double_quant:
            groups = -(-n_blocks // DQ_BLOCKSIZE)
            self.register_buffer(
                "absmax_codes", torch.zeros(n_blocks, dtype=torch.uint8, device=device)
            )
            self.register_buffer("absmax_scale", torch.zeros(groups, device=device))
            self.register_buffer("absmax_offset", torch.zeros(1, device=device))
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks, device=device))
        self.register_buffer("byte_table", byte_table(quant_type, device), persistent=False)
        self.bias = None
        if bias:
            zeros = torch.zeros(out_features, dtype=compute_dtype, device=device)
            self.bias = nn.Parameter(zeros, requires_grad=False)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quant_type: str = "nf4",
        double_quant: bool = True,
        blocksize: int = 64,
    ) -> NF4Linear:
        """Quantize an nn.Linear's weight; the bias is copied as is."""
        weight = linear.weight.detach()  # (out, in)
        has_bias = linear.bias is not None
        layer = cls(
            linear.in_features,
            linear.out_features,
            has_bias,
            quant_type=quant_type,
            double_quant=double_quant,
            blocksize=blocksize,
            compute_dtype=weight.dtype,
            device=weight.device,
        )
        layer.load_quantized(quantize_4bit(weight, quant_type, blocksize, double_quant))
        if has_bias:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def load_quantized(self, q: Quantized4bit) -> None:
        """Copy a `Quantized4bit` of this layer's shape and settings into the buffers."""
        mine = self.quantized()
        if (q.quant_type, q.blocksize, type(q.absmax), math.prod(q.shape)) != (
            mine.quant_type,
            mine.blocksize,
            type(mine.absmax),
            math.prod(mine.shape),
        ):
            raise ConfigError(f"{self!r} cannot hold a quantized weight of shape {list(q.shape)}")
        self.qweight.copy_(q.packed)
        if isinstance(q.absmax, Tensor):
            self.absmax.copy_(q.absmax)
        else:
            for name in ("codes", "scale", "offset"):
                getattr(self, f"absmax_{name}").copy_(getattr(q.absmax, name))

    def quantized(self) -> Quantized4bit:
        """The layer's weight as a `Quantized4bit` (views of the buffers)."""
        constants: Tensor | DoubleQuant = (
            DoubleQuant(self.absmax_codes, self.absmax_scale, self.absmax_offset)
            if self.double_quant
            else self.absmax
        )
        shape = torch.Size((self.out_features, self.in_features))
        return Quantized4bit(
            self.qweight, constants, shape, self.quant_type, self.blocksize, self.compute_dtype
        )

    def block_constants(self) -> Tensor:
        """(n_blocks,) fp32 absmax of each block (rebuilt from 8 bits when double-quantized)."""
        constants = self.quantized().absmax
        return constants if isinstance(constants, Tensor) else double_dequantize(constants)

    def dequantize(self, reuse: bool = False, held: bool = False) -> Tensor:
        """The float weight Ŵ, (out, in) in `compute_dtype`; with `reuse`, in a scratch buffer
        that the next such call of its size overwrites (see expand_4bit). held: take the
        scratch buffer as it is when it still holds this layer's unchanged Ŵ."""
        n = self.out_features * self.in_features
        holder = self._holder() if reuse else None
        flat = held_weight(self.qweight, holder) if held else None
        if flat is None:
            constants, table = self.block_constants(), self.byte_table
            flat = expand_4bit(self.qweight, constants, table, self.blocksize, n, reuse, holder)
        return flat.view(self.out_features, self.in_features).to(self.compute_dtype)  # (out, in)

    def _holder(self) -> tuple[int, ...] | None:
        """This layer and the state of its buffers: a changed code or constant (an in-place
        copy bumps the version, a move changes the address) no longer matches. None for
        inference tensors, which keep no version."""
        buffers = [b for b in self._buffers.values() if b is not None]
        if any(b.is_inference() for b in buffers):
            return None
        return (id(self), *(n for b in buffers for n in (b.data_ptr(), b._version)))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x if dtype == self.compute_dtype else x.to(self.compute_dtype)  # (..., in)
        bias = self.bias
        if torch.is_grad_enabled() and (
            h.requires_grad or (bias is not None and bias.requires_grad)
        ):
            y = _DequantLinear.apply(h, bias, self)  # (..., out)
        else:
            y = F.linear(h, self.dequantize(reuse=True), bias)  # (..., out)
        return y if y.dtype == dtype else y.to(dtype)

    def settings(self) -> dict[str, object]:
        """JSON-able constructor arguments (what save_quantized records per module)."""
        names = ("in_features", "out_features", "quant_type", "double_quant", "blocksize")
        return {
            **{name: getattr(self, name) for name in names},
            "bias": self.bias is not None,
            "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight: packed codes plus block constants (bias excluded)."""
        return self.quantized().nbytes

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> NF4Linear:
        # model.half()/.to(dtype) must not round the fp32 constants: they keep fp32 (moved to
        # the new device) while compute_dtype follows the cast, as a float weight would.
        kept = {k: b for k, b in self._buffers.items() if b is not None and b.is_floating_point()}
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=self.qweight.device))
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, quant_type={self.quant_type}, "
            f"blocksize={self.blocksize}, double_quant={self.double_quant}"
        )
