"""The 4-bit code books: a code is an index 0..15 into a table of values in [-1, 1].

A weight block is stored as codes plus one scale (its absmax): w ≈ scale · table[code].

NF4, NormalFloat (QLoRA, Dettmers et al. 2023, §3 and appendix E): normal quantiles. With Φ⁻¹
the normal quantile function and δ = 0.9677083 (so the end points are Φ⁻¹(δ), not ±∞),

    negative half:  Φ⁻¹(p) for p = 8 evenly spaced points from 1 - δ to 1/2 (drop 1/2)   → 7
    positive half:  Φ⁻¹(p) for p = 9 evenly spaced points from 1/2 to δ (drop 1/2)       → 8
    table = sort(negative ∪ {0} ∪ positive) / max                                          → 16

an exact zero and one more positive value than negative. The table below is bitsandbytes'
(and the paper's); `normal_float_values()` re-derives it from Φ⁻¹.

    code   0      1      2      3      4      5      6      7   8     9    ...  14     15
    value -1.0  -0.696 -0.525 -0.395 -0.284 -0.185 -0.091  0.0 0.080 0.161 ... 0.723  1.0

FP4: bitsandbytes' 4-bit float, 1 sign, 2 exponent and 1 mantissa bit, exponent bias 2,
divided by its largest value 12; in bit-pattern order (bit 3 = sign).
Int4: the symmetric integers -7..7 divided by 7 (15 codes used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
