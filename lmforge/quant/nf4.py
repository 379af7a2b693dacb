"""Block-wise 4-bit quantization (two codes per byte) and double quantization of the constants.

The flattened weight is cut into blocks of B = 64 values; each block keeps its absmax c and one
code per value (code books: codebooks.py):

    c_b  = max_{i ∈ b} |w_i|                         one fp32 constant per block
    q_i  = argmin_k | w_i / c_b - T[k] |              nearest code (ties to the lower value)
    ŵ_i  = c_b · T[q_i]                               dequantization

Double quantization (QLoRA §3) stores the constants in 8 bits: minus their mean μ, in groups
of 256, with the dynamic map D and one fp32 absmax s_g per group (blockwise.py, "grid"
rounding, as bitsandbytes' CPU kernel):

    c_b ≈ s_g · D[k_b] + μ                            8 bits per block + 32 per 256 blocks

which takes the overhead per weight from 32/64 = 0.5 to 8/64 + 32/(64·256) = 0.126953125 bits.
Codes, constants and dequantized weights equal bitsandbytes' CPU `quantize_4bit(...,
compress_statistics=True)` / `dequantize_4bit` bit for bit (tested).

Layout (row-major flattened weight, n = out · in values, B = 64; the last block zero-padded):

    w      │ w0  w1 │ w2  w3 │ ... │ w62 w63 ║ w64 w65 │ ...       block b = values bB..bB+B-1
    packed │  byte0 │  byte1 │ ... │ byte31  ║ byte32  │ ...       (⌈n/2⌉,) uint8
             hi lo     hi lo                                        hi nibble = even index
    absmax │ c0                              ║ c1      │ ...       (⌈n/B⌉,) fp32, or:
    double │ k0 (uint8) ... k255 ║ k256 ...   scale s_g (⌈n/B/256⌉,) fp32,  μ (1,) fp32

Dequantization is one gather (a 256-entry table maps a byte to its two values) and one
multiply by the block constants; with `reuse` it writes into a per-thread scratch buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.quant.blockwise import as_blocks, dequantize_blockwise, dynamic_map, quantize_blockwise
from lmforge.quant.codebooks import codebook
from lmforge.quant.scratch import hold, holds, scratch

DQ_BLOCKSIZE = 256  # constants per group in double quantization (bitsandbytes' choice)


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


def expand_4bit(
    packed: Tensor,
    absmax: Tensor,
    table: Tensor,
    blocksize: int,
    numel: int,
    reuse: bool = False,
    holder: object = None,
) -> Tensor:
    """(⌈n/2⌉,) uint8 codes + (nb,) fp32 constants → (n,) fp32 weights.

    reuse: write into this thread's scratch buffer for this size instead of a new tensor; the
    result is then overwritten by the next such call of the same size, so it must be consumed
    at once (a layer's product). Freeing and re-allocating megabytes per layer fragments the
    heap. holder: a tag recorded with that result (see `held_weight`); None records nothing."""
    if reuse:
        index = scratch("index", len(packed), torch.int32, packed.device).copy_(packed)
        name = f"values{len(packed)}"
        out = scratch(name, len(packed), table.dtype, packed.device)
        exact = 2 * len(packed) == numel == absmax.numel() * blocksize  # no padded copy below
        hold(name, packed.device, holder if exact else None)
        values = torch.index_select(table, 0, index, out=out).view(torch.float32)
    else:
        values = table.index_select(0, packed.int()).view(torch.float32)  # (2⌈n/2⌉,)
    total = absmax.numel() * blocksize
    if values.numel() != total:
        values = F.pad(values[:numel], (0, total - numel))  # (nb·B,)
    out = values.view(-1, blocksize).mul_(absmax[:, None])  # (nb, B)
    return out.view(-1)[:numel] if total != numel else out.view(-1)


def held_weight(packed: Tensor, holder: object) -> Tensor | None:
    """The scratch result of the last `expand_4bit(packed-sized, reuse=True, holder=...)` on this
    thread, if that call recorded `holder` (and nothing of its size has been expanded since)."""
    name = f"values{len(packed)}"
    if not holds(name, packed.device, holder):
        return None
    return scratch(name, len(packed), torch.int64, packed.device).view(torch.float32)


def dequantize_4bit(q: Quantized4bit, dtype: torch.dtype | None = None) -> Tensor:
    """The float weight (shape and dtype of the original unless `dtype` is given)."""
    absmax = q.absmax if isinstance(q.absmax, Tensor) else double_dequantize(q.absmax)
    table = byte_table(q.quant_type, q.packed.device)
    flat = expand_4bit(q.packed, absmax, table, q.blocksize, math.prod(q.shape))  # (n,)
    return flat.view(q.shape).to(dtype or q.dtype)


# ──────────────────────────────────────────────────────────── double quantization


def double_quantize(absmax: Tensor) -> DoubleQuant:
    """Store fp32 block constants in 8 bits (mean removed, groups of 256, dynamic map)."""
    offset = absmax.mean()  # () fp32
    codes, scale = quantize_blockwise(absmax - offset, dynamic_map(), DQ_BLOCKSIZE, rounding="grid")
    return DoubleQuant(codes, scale, offset.reshape(1))


def double_dequantize(dq: DoubleQuant) -> Tensor:
    """The (n_blocks,) fp32 constants back from their 8-bit form."""
    qmap = dynamic_map().to(dq.codes.device)
    return dequantize_blockwise(dq.codes, dq.scale, qmap, DQ_BLOCKSIZE) + dq.offset


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
