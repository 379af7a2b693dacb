"""Block-wise 4-bit quantization with double quantization, and the NF4Linear base layer.

QLoRA (Dettmers et al., 2023, https://arxiv.org/abs/2305.14314) stores a frozen weight W in
4 bits per value. The flattened weight is cut into blocks of B = 64 values; each block keeps
its absmax c and one code per value (the code book is NF4, see codebooks.py):

    c_b  = max_{i ∈ b} |w_i|                         one fp32 constant per block
    q_i  = argmin_k | w_i / c_b - T[k] |              nearest code (ties to the lower value)
    ŵ_i  = c_b · T[q_i]                               dequantization

Double quantization (QLoRA §3) stores the constants themselves in 8 bits: subtract their
mean μ, cut them into groups of 256, and quantize each group with the dynamic 8-bit map D
and its own fp32 absmax s_g:

    c_b ≈ s_g · D[k_b] + μ                            8 bits per block + 32 per 256 blocks

so the overhead per weight falls from 32/64 = 0.5 bits to 8/64 + 32/(64·256) = 0.126953125
bits (`overhead_bits`). Everything matches bitsandbytes' CPU implementation bit for bit
(`quantize_4bit(..., compress_statistics=True)` / `dequantize_4bit`), tested. That includes
its 8-bit rounding: D's code is read at the nearest of 65,536 grid points over [-1, 1]
(`codebooks.dynamic_lookup`), which differs from an exact nearest-code search for ~0.1% of
the constants (by one code; a negligible error).

Data layout (row-major flattened weight, n = out · in values, B = 64):

    w      │ w0  w1 │ w2  w3 │ ... │ w62 w63 ║ w64 w65 │ ...       block b = values bB..bB+B-1
    packed │  byte0 │  byte1 │ ... │ byte31  ║ byte32  │ ...       (⌈n/2⌉,) uint8
             hi lo     hi lo                                        hi nibble = even index
    absmax │ c0                              ║ c1      │ ...       (⌈n/B⌉,) fp32, or:
    double │ k0 (uint8) ... k255 ║ k256 ...   scale s_g (⌈n/B/256⌉,) fp32,  μ (1,) fp32

The last block may be short: it is padded with zeros (which leave its absmax unchanged).
Dequantization is one gather: a 256-entry table maps each byte to its two values, then one
multiply by the block constants. `NF4Linear.forward` runs exactly this, caching nothing, and
its backward pass rebuilds Ŵ for the input gradient instead of keeping it alive. Both write
Ŵ into one scratch buffer per thread that every layer reuses, so a step allocates no
weight-sized temporaries.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.quant.codebooks import (
    as_blocks,
    codebook,
    dequantize_blockwise,
    dynamic_lookup,
    dynamic_map,
)

DQ_BLOCKSIZE = 256  # constants per group in double quantization (bitsandbytes' choice)
_SCRATCH = threading.local()  # per thread: buffers for a Ŵ that one product consumes at once


def check_settings(quant_type: str, blocksize: int) -> None:
    """Refuse an unknown code book or a block that cannot hold whole bytes."""
    codebook(quant_type)
    if not isinstance(blocksize, int) or blocksize <= 0 or blocksize % 2:
        raise ConfigError(
            f"blocksize must be a positive even number of values (64 is QLoRA's), got {blocksize!r}"
        )


def overhead_bits(
    blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = DQ_BLOCKSIZE
) -> float:
    """Bits per weight spent on the block constants: 32/B, or 8/B + 32/(B·256) when double.

    64 → 0.5 plain, 0.126953125 double (the per-tensor mean adds 32 bits per tensor)."""
    if double_quant:
        return 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 32 / blocksize


@dataclass
class DoubleQuant:
    """fp32 block constants stored in 8 bits: c ≈ scale[g] · dynamic_map[codes] + offset."""

    codes: Tensor  # (n_blocks,) uint8: dynamic-map code of each centred constant
    scale: Tensor  # (⌈n_blocks / 256⌉,) fp32: absmax of each group of 256 centred constants
    offset: Tensor  # (1,) fp32: the mean of the constants, subtracted before quantizing

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.offset))


@dataclass
class Quantized4bit:
    """A weight in 4 bits: packed codes plus block constants (plain or double-quantized)."""

    packed: Tensor  # (⌈n/2⌉,) uint8: two codes per byte, the even-index value in the high nibble
    absmax: Tensor | DoubleQuant  # (⌈n/B⌉,) fp32 block absmax, or its 8-bit form
    shape: torch.Size  # shape of the original weight
    quant_type: str  # code book name: nf4 | fp4 | int4
    blocksize: int  # values per block (B)
    dtype: torch.dtype  # dtype of the original weight (dequantize's default)

    @property
    def nbytes(self) -> int:
        """Storage of codes and constants."""
        constants = self.absmax
        if isinstance(constants, Tensor):
            return self.packed.numel() + constants.numel() * constants.element_size()
        return self.packed.numel() + constants.nbytes


# ──────────────────────────────────────────────────────────────────── 4-bit blocks


def _nearest_codes(scaled: Tensor, quant_type: str) -> Tensor:
    """Code of the nearest table value for each entry of `scaled` (in [-1, 1]); int64."""
    values = codebook(quant_type).values(scaled.device)  # (K,)
    sorted_values, order = values.sort(stable=True)  # FP4's codes are not in value order
    midpoints = (sorted_values[:-1] + sorted_values[1:]) / 2  # (K - 1,)
    return order[torch.bucketize(scaled, midpoints)]  # a tie goes to the lower value


def quantize_4bit(
    weight: Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False
) -> Quantized4bit:
    """Block-wise absmax quantization of any float tensor to 4-bit codes (module docstring)."""
    check_settings(quant_type, blocksize)
    if not weight.is_floating_point() or weight.numel() == 0:
        raise ConfigError(
            f"quantize_4bit needs a non-empty float weight, got {weight.dtype} {list(weight.shape)}"
        )
    flat = weight.detach().reshape(-1).float()  # (n,)
    n = flat.numel()
    blocks = as_blocks(flat, blocksize)  # (nb, B)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    scaled = blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]  # (nb, B)
    tail = n % blocksize
    if tail:  # bitsandbytes divides (not multiplies) in the short last block
        scaled[-1, :tail] = flat[n - tail :] / absmax[-1].clamp(min=1e-38)
    codes = _nearest_codes(scaled.clamp(-1.0, 1.0).view(-1), quant_type)  # (nb·B,)
    codes = codes[: n + n % 2].to(torch.uint8)  # an odd tensor keeps one padding code
    packed = (codes[0::2] << 4) | codes[1::2]  # (⌈n/2⌉,)
    constants = double_quantize(absmax) if double_quant else absmax
    return Quantized4bit(packed, constants, weight.shape, quant_type, blocksize, weight.dtype)


def byte_table(quant_type: str, device: torch.device | str | None = None) -> Tensor:
    """(256,) int64: byte → its two fp32 values (high nibble first), packed in 8 bytes.

    Viewing the gathered int64s as fp32 unpacks the pairs in order, so one index_select
    decodes a whole packed weight (int64 keeps the table immune to model.half())."""
    values = codebook(quant_type).padded_values(device)  # (16,)
    byte = torch.arange(256, device=device)
    pairs = torch.stack([values[byte >> 4], values[byte & 15]], dim=1)  # (256, 2)
    return pairs.contiguous().view(torch.int64).view(256)


def scratch(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """This thread's reusable buffer `name` of at least `numel` elements, cut to `numel`."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (name, dtype, device, torch.is_inference_mode_enabled())  # inference tensors differ
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def expand_4bit(
    packed: Tensor, absmax: Tensor, table: Tensor, blocksize: int, numel: int, reuse: bool = False
) -> Tensor:
    """(⌈n/2⌉,) uint8 codes + (nb,) fp32 constants → (n,) fp32 weights.

    reuse: write into this thread's scratch buffers instead of new tensors; the result is
    then overwritten by the next such call, so it must be consumed at once (a layer's
    product). Freeing and re-allocating megabytes per layer fragments the heap."""
    if reuse:
        index = scratch("index", len(packed), torch.int32, packed.device).copy_(packed)
        out = scratch("values", len(packed), table.dtype, packed.device)
        values = torch.index_select(table, 0, index, out=out).view(torch.float32)
    else:
        values = table.index_select(0, packed.int()).view(torch.float32)  # (2⌈n/2⌉,)
    total = absmax.numel() * blocksize
    if values.numel() != total:
        values = F.pad(values[:numel], (0, total - numel))  # (nb·B,)
    out = values.view(-1, blocksize).mul_(absmax[:, None])  # (nb, B)
    return out.view(-1)[:numel] if total != numel else out.view(-1)


def dequantize_4bit(q: Quantized4bit, dtype: torch.dtype | None = None) -> Tensor:
    """The float weight (shape and dtype of the original unless `dtype` is given)."""
    absmax = q.absmax if isinstance(q.absmax, Tensor) else double_dequantize(q.absmax)
    table = byte_table(q.quant_type, q.packed.device)
    flat = expand_4bit(q.packed, absmax, table, q.blocksize, math.prod(q.shape))  # (n,)
    return flat.view(q.shape).to(dtype or q.dtype)


# ──────────────────────────────────────────────────────────── double quantization


def quantize_dynamic(x: Tensor, blocksize: int = DQ_BLOCKSIZE) -> tuple[Tensor, Tensor]:
    """Block-wise 8-bit quantization with the dynamic map: (codes uint8 (n,), absmax (nb,)).

    Rounds through bitsandbytes' 65,536-point grid (see `dynamic_lookup`), as its CPU
    kernel does; an all-zero block stores code 0."""
    flat = x.detach().reshape(-1).float()  # (n,)
    blocks = as_blocks(flat, blocksize)  # (nb, 256)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    inverse = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))  # (nb,)
    v = (blocks * inverse[:, None]).clamp(-1.0, 1.0)  # (nb, 256)
    grid = (((v + 1.0) * 0.5) * 65535.0 + 0.5).to(torch.int64)  # same rounding steps as bnb
    codes = dynamic_lookup().to(x.device)[grid]  # (nb, 256) uint8
    codes[absmax == 0] = 0
    return codes.view(-1)[: flat.numel()], absmax


def dequantize_dynamic(codes: Tensor, absmax: Tensor, blocksize: int = DQ_BLOCKSIZE) -> Tensor:
    """(n,) uint8 codes + (nb,) fp32 absmax → (n,) fp32."""
    return dequantize_blockwise(codes, absmax, dynamic_map().to(codes.device), blocksize)


def double_quantize(absmax: Tensor) -> DoubleQuant:
    """Store fp32 block constants in 8 bits (mean removed, groups of 256, dynamic map)."""
    offset = absmax.mean()  # () fp32
    codes, scale = quantize_dynamic(absmax - offset)
    return DoubleQuant(codes, scale, offset.reshape(1))


def double_dequantize(dq: DoubleQuant) -> Tensor:
    """The (n_blocks,) fp32 constants back from their 8-bit form."""
    return dequantize_dynamic(dq.codes, dq.scale) + dq.offset


# ──────────────────────────────────────────────────────────────────────── errors


def quantization_error(
    weight: Tensor, quant_type: str, double_quant: bool = False, blocksize: int = 64
) -> dict[str, float]:
    """How far the round trip moves a weight: {"mse", "mae", "max_abs", "bits_per_parameter"}."""
    q = quantize_4bit(weight, quant_type, blocksize, double_quant)
    error = dequantize_4bit(q, torch.float32) - weight.detach().float()
    return {
        "mse": error.square().mean().item(),
        "mae": error.abs().mean().item(),
        "max_abs": error.abs().max().item(),
        "bits_per_parameter": 8 * q.nbytes / weight.numel(),
    }


# ──────────────────────────────────────────────────────────────────── the layer


class _DequantLinear(torch.autograd.Function):
    """y = x Ŵᵀ + b with Ŵ rebuilt in forward and again in backward (never saved)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, bias: Tensor | None, layer: NF4Linear) -> Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize(reuse=True), bias)  # (..., out)

    @staticmethod
    @torch.autograd.function.once_differentiable  # Ŵ lives in a scratch buffer, not the graph
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ ctx.layer.dequantize(reuse=True).to(grad.dtype)  # (..., in)
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

    def dequantize(self, reuse: bool = False) -> Tensor:
        """The float weight Ŵ, (out, in) in `compute_dtype`; with `reuse`, in a scratch buffer
        that the next such call overwrites (see expand_4bit)."""
        n = self.out_features * self.in_features
        constants, table = self.block_constants(), self.byte_table
        flat = expand_4bit(self.qweight, constants, table, self.blocksize, n, reuse)
        return flat.view(self.out_features, self.in_features).to(self.compute_dtype)  # (out, in)

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
