"""Code books of 4-bit quantization, and the 8-bit dynamic map used for double quantization.

A 4-bit code is an index 0..15 into a table of 16 values in [-1, 1]; a weight block is
stored as codes plus one scale (its absmax), and w ≈ scale · table[code].

NF4, NormalFloat (Dettmers et al., 2023, "QLoRA", §3 and appendix E): neural network weights
are close to normal, so the table holds normal quantiles. With Φ⁻¹ the normal quantile
function and δ = 0.9677083 (the outermost probability, chosen so that the end points are
Φ⁻¹(δ) rather than ±∞),

    negative half:  Φ⁻¹(p) for p = 8 evenly spaced points from 1 - δ to 1/2 (drop 1/2)   → 7
    positive half:  Φ⁻¹(p) for p = 9 evenly spaced points from 1/2 to δ (drop 1/2)       → 8
    table = sort(negative ∪ {0} ∪ positive) / max                                          → 16

which gives an exact zero (padding and zero weights stay exact) and one more positive value
than negative. The table below is the one bitsandbytes hard-codes (and the paper prints);
`normal_float_values()` re-derives it from Φ⁻¹ to show where it comes from.

    code   0      1      2      3      4      5      6      7   8     9    ...  14     15
    value -1.0  -0.696 -0.525 -0.395 -0.284 -0.185 -0.091  0.0 0.080 0.161 ... 0.723  1.0

FP4 is bitsandbytes' 4-bit float: 1 sign bit, 2 exponent bits, 1 mantissa bit, exponent bias
2, normalised by its largest value 12; the table is in bit-pattern order (bit 3 = sign).
Int4 is plain absmax rounding to the symmetric integers -7..7, divided by 7 (15 codes used).

The dynamic map (Dettmers, 2016, "8-Bit Approximations for Parallelism in Deep Learning")
is a signed 8-bit float-like table: for exponent level i = 0..6 it holds the 2^i midpoints
of linspace(0.1, 1, 2^i + 1) times 10^(i-6), with both signs, plus 0 and 1: 256 sorted values
that are dense near zero. Double quantization stores the block scales with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.registry import Registry

NF4_OFFSET = 0.9677083  # δ: the outermost probability of the NF4 quantiles (QLoRA, appendix E)


@dataclass(frozen=True)
class CodeBook:
    """A 4-bit code book: `raw[i] / scale` is the value of code i (computed in fp32)."""

    name: str
    raw: tuple[float, ...]  # one value per code, in code (nibble) order; at most 16
    scale: float  # divisor that brings the largest |value| to 1
    doc: str  # one line for tables and error messages

    def values(self, device: torch.device | str | None = None) -> Tensor:
        """The code values, (len(raw),) fp32, built as bitsandbytes builds them (raw / scale)."""
        return torch.tensor(self.raw, dtype=torch.float32, device=device) / self.scale

    def padded_values(self, device: torch.device | str | None = None) -> Tensor:
        """(16,) fp32: the values, unused codes (Int4 has 15) decoding to 0."""
        values = torch.zeros(16, dtype=torch.float32, device=device)
        values[: len(self.raw)] = self.values(device)
        return values


CODEBOOKS: Registry[CodeBook] = Registry("4-bit code book")

CODEBOOKS.add(
    "nf4",
    CodeBook(
        "nf4",
        (
            -1.0,
            -0.6961928009986877,
            -0.5250730514526367,
            -0.39491748809814453,
            -0.28444138169288635,
            -0.18477343022823334,
            -0.09105003625154495,
            0.0,
            0.07958029955625534,
            0.16093020141124725,
            0.24611230194568634,
            0.33791524171829224,
            0.44070982933044434,
            0.5626170039176941,
            0.7229568362236023,
            1.0,
        ),
        1.0,
        "NormalFloat: quantiles of N(0, 1), exact zero (QLoRA)",
    ),
)
# Bit pattern s e e m: subnormal 0b000 = 0 and 0b001 = 0.0625, normals (1 + m/2) · 2^(e - 2)
# scaled by 4 so that they read as the small integers bitsandbytes lists. Code 8, the
# negative zero pattern, decodes to +0.0 as in bitsandbytes (bit-identical dequantization).
CODEBOOKS.add(
    "fp4",
    CodeBook(
        "fp4",
        (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
        + (0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0),
        12.0,
        "4-bit float e2m1 (bitsandbytes fp4)",
    ),
)
CODEBOOKS.add(
    "int4",
    CodeBook("int4", tuple(float(i) for i in range(-7, 8)), 7.0, "absmax integers -7..7 / 7"),
)


def codebook(name: str) -> CodeBook:
    """The registered code book `name`; a ConfigError naming the field otherwise."""
    if name not in CODEBOOKS:
        raise ConfigError(
            f"quant_type {name!r} is unknown; choose from {', '.join(CODEBOOKS.names())}"
        )
    return CODEBOOKS.get(name)


def normal_float_values(offset: float = NF4_OFFSET) -> list[float]:
    """The 16 NF4 values re-derived from normal quantiles (see the module docstring).

    Computed in float64 with torch's Φ⁻¹ (`torch.special.ndtri`); it agrees with the
    hard-coded table to ~1e-7, the table being the reference bit for bit."""
    p = torch.linspace(offset, 0.5, 9, dtype=torch.float32).double()[:-1]  # (8,) probabilities
    q = torch.linspace(offset, 0.5, 8, dtype=torch.float32).double()[:-1]  # (7,)
    positive = torch.special.ndtri(p)  # (8,)
    negative = -torch.special.ndtri(q)  # (7,)
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.max()).tolist()


@functools.cache
def dynamic_map() -> Tensor:
    """bitsandbytes' signed 8-bit dynamic map: (256,) fp32, sorted, from -0.99297 to 1."""
    parts = [torch.tensor([0.0, 1.0])]
    for i in range(7):
        edges = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)  # (2^i + 1,)
        means = (edges[:-1] + edges[1:]) / 2.0 * (10.0 ** (i - 6))  # (2^i,) fp32
        parts += [means, -means]
    return torch.cat(parts).sort().values  # (256,)


@functools.cache
def dynamic_lookup() -> Tensor:
    """(65536,) uint8: the nearest dynamic-map code of each point of a 16-bit grid over [-1, 1].

    bitsandbytes' CPU kernel rounds a normalised value v to grid point
    g = trunc(((v + 1) · 0.5) · 65535 + 0.5) and reads the code from this table: nearest code
    to the grid point, not to v itself (it can differ by one code near a midpoint, or by a
    few codes near zero where the map is denser than the grid). Matching it keeps the
    double-quantized constants identical to bitsandbytes on CPU."""
    code = dynamic_map()
    midpoints = 0.5 * (code[:-1] + code[1:])  # (255,)
    grid = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32)) / 65535.0  # (65536,)
    return torch.bucketize(grid, midpoints).to(torch.uint8)  # ties go to the lower code


def as_blocks(flat: Tensor, block_size: int) -> Tensor:
    """(n,) → (⌈n/B⌉, B): a view when B divides n, else a copy with the last block zero-padded."""
    pad = -flat.numel() % block_size
    return (F.pad(flat, (0, pad)) if pad else flat).view(-1, block_size)


def dequantize_blockwise(
    codes: Tensor, absmax: Tensor, qmap: Tensor, block_size: int = 256
) -> Tensor:
    """Block-wise 8-bit values back to fp32: absmax(block) · qmap[code]; codes (n,) uint8,
    absmax (nb,) → (n,). The 8-bit optimizer state and double-quantized constants share it."""
    n = codes.numel()
    values = qmap.index_select(0, codes.reshape(-1).long())  # (n,)
    return (as_blocks(values, block_size) * absmax[:, None]).view(-1)[:n]
