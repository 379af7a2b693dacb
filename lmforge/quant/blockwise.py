"""Block-wise 8-bit quantization with dynamic maps (NF4's block constants, 8-bit AdamW's moments).

A flat tensor of n values is cut into blocks of B (the last one zero-padded); block b keeps
one fp32 absmax A_b and one uint8 code per value, an index into a sorted map of 256 values:

    x_i ≈ A_b · map[q_i]                       codes (n,) uint8, absmax (⌈n/B⌉,) fp32

Dynamic tree maps (Dettmers 2016, arXiv:1511.04561; Dettmers et al. 2022, arXiv:2110.02861)
read an 8-bit code as a sign, E zeros (exponent 10^-E), an indicator bit and F fraction bits:

    signed:    [s | 0 … 0 | 1 | f … f]    F = 6 - E
    unsigned:      [0 … 0 | 1 | f … f]    F = 7 - E      (the sign bit is one more fraction bit)
    value = ±10^-E · (0.1 + 0.9·(k + 1) / 2^F)          k = the fraction bits; all zeros = 0

so each decade is cut into linear steps, fewer for smaller decades. Two tables come from it:

    dynamic_tree_map(signed)  each step's upper end: ±1 and every decade's top are exact
                              (8-bit AdamW: signed for m, unsigned for v)
    dynamic_map()             bitsandbytes' signed table: each step's midpoint, plus 0 and 1
                              (NF4 double quantization, bit for bit with bitsandbytes)

A code is the value's rank in the sorted table. Two roundings of the normalised value:

    nearest   x / A_b, then the nearest map value (a tie goes to the lower one)
    grid      bitsandbytes' CPU kernel: v = clamp(x · (1 / A_b), -1, 1) goes to grid point
              g = trunc((v + 1) / 2 · 65535 + 0.5), and the code is the one nearest g's value
              (one code off for ~0.1% of values); an all-zero block stores code 0
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.registry import Registry

BLOCK_SIZE = 256  # values per block (bitsandbytes' choice for both users)
GRID_POINTS = 65536  # points of the "grid" rounding over [-1, 1]


def as_blocks(flat: Tensor, block_size: int) -> Tensor:
    """(n,) → (⌈n/B⌉, B): a view when B divides n, else a copy with the last block zero-padded."""
    pad = -flat.numel() % block_size
    return (F.pad(flat, (0, pad)) if pad else flat).view(-1, block_size)


def _midpoints(qmap: Tensor) -> Tensor:
    """(255,) the midpoints between neighbouring map values: the rounding boundaries."""
    return ((qmap[1:] + qmap[:-1]) / 2).contiguous()


# ──────────────────────────────────────────────────────────────────────── the maps


@functools.cache
def dynamic_map() -> Tensor:
    """bitsandbytes' signed 8-bit dynamic map: (256,) fp32, sorted, from -0.99297 to 1."""
    parts = [torch.tensor([0.0, 1.0])]
    for i in range(7):
        edges = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)  # (2^i + 1,)
        means = (edges[:-1] + edges[1:]) / 2.0 * (10.0 ** (i - 6))  # (2^i,) fp32
        parts += [means, -means]
    return torch.cat(parts).sort().values  # (256,)


def _decode(code: int, signed: bool) -> float:
    """The value of one 8-bit dynamic-tree code (bit layout above)."""
    bits = 7 if signed else 8  # bits after the sign bit
    negative = signed and bool(code & 0x80)
    body = code & ((1 << bits) - 1)
    if body == 0:
        return 0.0
    exponent = bits - body.bit_length()  # leading zeros before the indicator bit
    fraction_bits = bits - exponent - 1
    k = body & ((1 << fraction_bits) - 1)
    magnitude = 10.0**-exponent * (0.1 + 0.9 * (k + 1) / 2**fraction_bits)
    return -magnitude if negative else magnitude


def dynamic_tree_map(signed: bool) -> Tensor:
    """The 256 values of the signed (±[1e-6, 1]) or unsigned ([1e-7, 1]) tree map, sorted."""
    values = sorted(_decode(code, signed) for code in range(256))
    return torch.tensor(values, dtype=torch.float32)  # (256,)


# ──────────────────────────────────────────────────────────────────── the roundings


class NearestCode:
    """code(x) = the number of map midpoints below x, i.e. `torch.bucketize(x, midpoints)`
    (a tie goes to the lower value), found with two table lookups instead of a binary search.

    A float32's bits, read as an integer (negatives mirrored), are ordered like its value; the
    top 17 bits of that key name a bucket 1/256 of an octave wide. A bucket holds at most one
    midpoint of the dynamic maps, so the code is the count of midpoints below the bucket plus
    one if x is above the bucket's own midpoint. A map too fine for that falls back to
    bucketize."""

    SHIFT = 15  # key bits below the bucket index: 23 mantissa bits − 8 kept

    def __init__(self, qmap: Tensor) -> None:
        self.midpoints = _midpoints(qmap)  # (255,) sorted
        keys = self._keys(self.midpoints).long()
        self.offset = 1 << (31 - self.SHIFT)
        buckets = (keys >> self.SHIFT) + self.offset
        n = 2 * self.offset
        self.exact = bool(torch.bincount(buckets.cpu(), minlength=n).max() <= 1)
        starts = (torch.arange(n, device=qmap.device) - self.offset) << self.SHIFT
        self.below = torch.searchsorted(keys, starts).to(torch.uint8)  # (n,) ≤ 255
        self.inside = torch.full((n,), float("inf"), device=qmap.device)
        self.inside[buckets] = self.midpoints

    @staticmethod
    def _keys(x: Tensor) -> Tensor:
        bits = x.view(torch.int32)
        return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)  # −0 and +0 share key 0

    def __call__(self, x: Tensor) -> Tensor:
        """uint8 codes of a float32 tensor."""
        if not self.exact:
            return torch.bucketize(x, self.midpoints).to(torch.uint8)
        bucket = ((self._keys(x) >> self.SHIFT) + self.offset).long()  # index_select's fast path
        return self.below.index_select(0, bucket) + (x > self.inside.index_select(0, bucket))


_CODERS: dict[tuple[object, ...], NearestCode] = {}
_GRIDS: dict[tuple[object, ...], Tensor] = {}


def nearest_code(qmap: Tensor) -> NearestCode:
    """The (cached) NearestCode of a map."""
    key = (qmap.device, *qmap.tolist())
    if key not in _CODERS:
        _CODERS[key] = NearestCode(qmap.float())
    return _CODERS[key]


def grid_codes(qmap: Tensor) -> Tensor:
    """(65536,) uint8, cached: the code nearest each grid point -1 + 2g/65535 (ties lower)."""
    key = (qmap.device, *qmap.tolist())
    if key not in _GRIDS:  # built on the CPU, as the kernel it reproduces
        grid = -1.0 + (2.0 * torch.arange(GRID_POINTS, dtype=torch.float32)) / (GRID_POINTS - 1)
        codes = torch.bucketize(grid, _midpoints(qmap.float().cpu())).to(torch.uint8)
        _GRIDS[key] = codes.to(qmap.device)  # (65536,)
    return _GRIDS[key]


def _round_nearest(blocks: Tensor, absmax: Tensor, qmap: Tensor) -> tuple[Tensor, Tensor]:
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = (blocks / scale[:, None]).view(-1)  # (nb·B,) in [-1, 1]
    return normed, nearest_code(qmap)(normed)


def _round_grid(blocks: Tensor, absmax: Tensor, qmap: Tensor) -> tuple[Tensor, Tensor]:
    inverse = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))  # (nb,)
    normed = (blocks * inverse[:, None]).clamp(-1.0, 1.0)  # (nb, B)
    grid = (((normed + 1.0) * 0.5) * (GRID_POINTS - 1) + 0.5).to(torch.int64)  # bnb's steps
    codes = grid_codes(qmap)[grid]  # (nb, B)
    codes[absmax == 0] = 0
    return normed.view(-1), codes.view(-1)


# rounding name → (blocks (nb, B), absmax (nb,), map) → (normalised (nb·B,), codes (nb·B,) uint8)
Rounding = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
ROUNDINGS: Registry[Rounding] = Registry("8-bit rounding")
ROUNDINGS.add("nearest", _round_nearest)
ROUNDINGS.add("grid", _round_grid)


# ──────────────────────────────────────────────────────────────────────── the codec


def quantize_blockwise(
    x: Tensor,
    qmap: Tensor,
    block_size: int = BLOCK_SIZE,
    *,
    rounding: str = "nearest",
    round_up_tiny: bool = False,
) -> tuple[Tensor, Tensor]:
    """Codes (n,) uint8 and absmax (⌈n/B⌉,) fp32 of any tensor x of n values (module docstring).

    rounding: "nearest" or "grid" (bitsandbytes' CPU rounding). round_up_tiny, for a map whose
    code 0 is 0 (unsigned): a positive value never gets code 0."""
    flat = x.detach().reshape(-1).float()  # (n,)
    n = flat.numel()
    blocks = as_blocks(flat, block_size)  # (nb, B)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    normed, codes = ROUNDINGS.get(rounding)(blocks, absmax, qmap.to(flat.device))
    normed, codes = normed[:n], codes[:n]
    if round_up_tiny:
        codes = torch.where((codes == 0) & (normed > 0), torch.ones_like(codes), codes)
    return codes, absmax


def dequantize_blockwise(
    codes: Tensor, absmax: Tensor, qmap: Tensor, block_size: int = BLOCK_SIZE
) -> Tensor:
    """absmax(block) · qmap[code]: codes (n,) uint8, absmax (⌈n/B⌉,) → (n,) fp32."""
    n = codes.numel()
    values = qmap.index_select(0, codes.reshape(-1).long())  # (n,)
    return (as_blocks(values, block_size) * absmax[:, None]).view(-1)[:n]
