"""8-bit AdamW: moments stored as block-wise dynamic-map uint8 codes (Dettmers et al. 2022).

Dynamic tree quantization (Dettmers 2016, arXiv:1511.04561) reads an 8-bit code as

    signed:    [s | 0 … 0 | 1 | f … f]    s sign, E zeros = exponent 10^-E, 1 indicator,
    unsigned:      [0 … 0 | 1 | f … f]    F = 6 - E (signed) or 7 - E (unsigned) fraction bits

    value = ±10^-E · (0.1 + 0.9·(k + 1) / 2^F),   k = the fraction bits as an integer,

i.e. each decade (10^-(E+1), 10^-E] is cut into 2^F linear steps, with fewer steps for smaller
decades; all-zero bits (no indicator) is 0. The signed map spans ±[1e-6, 1] (255 distinct values:
+0 and -0 coincide); the unsigned one re-purposes the sign bit as one more fraction bit
(8-bit Optimizers via Block-wise Quantization, Dettmers et al. 2022, arXiv:2110.02861) and spans
[1e-7, 1] in 256 values. We keep the 256 values sorted and store a value's rank in that table as
its code (a relabelling of the bit pattern), so quantizing is one `bucketize` on the midpoints.
(codebooks.dynamic_map is bitsandbytes' signed table, bin midpoints plus 1.0, kept for NF4
double-quantization parity; this one takes each bin's upper end, so ±1 and every decade's
top are exact. Trained side by side, the two differ by < 0.5% in loss; tests check.)

Block-wise: a tensor is flattened and cut into blocks of 256 elements (the block size
bitsandbytes uses for its 8-bit optimizers); each block b stores one fp32 absmax A_b and codes
q with x ≈ A_b · map[q]. An outlier then costs precision in its own block only.

Each step of AdamW8bit, for a parameter of n ≥ min_8bit_size elements:

    m, v ← dequantize(codes, absmax)           (n,) fp32 each
    AdamW update of θ with m, v in fp32         (adamw.py, the same ops as torch.optim.AdamW)
    codes, absmax ← quantize(m), quantize(v)   m: signed map, v: unsigned map

State per parameter: 2n bytes of codes + 8·⌈n/256⌉ bytes of absmax (+ the step), against 8n for
fp32 AdamW, a ratio of 0.25 + 1/256 ≈ 0.254. Smaller tensors (biases, norms) keep fp32 moments,
as bitsandbytes does: their quantization saves little and their updates stay exact.
One deviation from round-to-nearest: a positive v is never stored as 0 (it rounds up to the
smallest code), because a lost second moment would turn the step into m/ε.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError
from lmforge.quant.adamw import AdamWBase, Hyper, Params, adamw_update_
from lmforge.quant.codebooks import as_blocks, dequantize_blockwise

BLOCK_SIZE = 256
MIN_8BIT_SIZE = 4096
CHUNK = 1 << 18  # elements updated at a time: bounds the fp32 working copies of m and v


# ---------------------------------------------------------------- the dynamic map


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
    """The 256 values of the signed (for m) or unsigned (for v) dynamic map, sorted: (256,)."""
    values = sorted(_decode(code, signed) for code in range(256))
    return torch.tensor(values, dtype=torch.float32)


class NearestCode:
    """code(x) = the number of map midpoints below x, i.e. `torch.bucketize(x, midpoints)`
    (a tie goes to the lower value), found with two table lookups instead of a binary search.

    A float32's bits, read as an integer (negatives mirrored), are ordered like its value; the
    top 17 bits of that key name a bucket 1/256 of an octave wide. A bucket holds at most one
    midpoint of the dynamic maps (their steps are coarser), so the code is the count of
    midpoints below the bucket plus one if x is above the bucket's own midpoint. A map too
    fine for that falls back to bucketize."""

    SHIFT = 15  # key bits below the bucket index: 23 mantissa bits − 8 kept

    def __init__(self, qmap: Tensor) -> None:
        self.midpoints = ((qmap[1:] + qmap[:-1]) / 2).contiguous()  # (255,) sorted
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


_CODERS: dict[tuple[Any, ...], NearestCode] = {}


def nearest_code(qmap: Tensor) -> NearestCode:
    """The (cached) NearestCode of a map."""
    key = (qmap.device, *qmap.tolist())
    if key not in _CODERS:
        _CODERS[key] = NearestCode(qmap.float())
    return _CODERS[key]


def quantize_blockwise(
    x: Tensor, qmap: Tensor, block_size: int = BLOCK_SIZE, *, round_up_tiny: bool = False
) -> tuple[Tensor, Tensor]:
    """Nearest-value codes of x / absmax(block) and the per-block absmax.

    x: any shape, n elements; returns codes (n,) uint8 and absmax (⌈n/block_size⌉,) fp32.
    round_up_tiny (unsigned maps): a positive value never gets code 0, which decodes to 0.
    """
    flat = x.detach().reshape(-1).float()  # (n,)
    n = flat.numel()
    blocks = as_blocks(flat, block_size)  # (nb, bs)
    absmax = blocks.abs().amax(dim=1)  # (nb,)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = (blocks / scale[:, None]).view(-1)[:n]  # (n,) in [-1, 1]
    codes = nearest_code(qmap)(normed)  # (n,) uint8, ties to the lower value
    if round_up_tiny:
        codes = torch.where((codes == 0) & (normed > 0), torch.ones_like(codes), codes)
    return codes, absmax


# ---------------------------------------------------------------- the optimizer


class AdamW8bit(AdamWBase):
    """AdamW with m and v as block-wise 8-bit dynamic-map codes (fp32 for small tensors).

    Same constructor and defaults as torch.optim.AdamW (lr, betas, eps, weight_decay), plus
    block_size (elements per absmax block) and min_8bit_size (tensors with fewer elements
    keep fp32 moments and then update exactly like torch.optim.AdamW).

    State of a quantized parameter (plain tensors, safetensors-storable): step (),
    exp_avg_code / exp_avg_sq_code (n,) uint8, exp_avg_absmax / exp_avg_sq_absmax (nb,) fp32.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        block_size: int = BLOCK_SIZE,
        min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:
        if block_size < 1 or min_8bit_size < 0:
            raise ConfigError(
                f"AdamW8bit: block_size={block_size} must be >= 1 and "
                f"min_8bit_size={min_8bit_size} >= 0"
            )
        self.block_size, self.min_8bit_size = block_size, min_8bit_size
        self._maps: dict[torch.device, tuple[Tensor, Tensor]] = {}
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def maps(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(signed map for m, unsigned map for v) on `device`, built once."""
        if device not in self._maps:
            self._maps[device] = (
                dynamic_tree_map(True).to(device),
                dynamic_tree_map(False).to(device),
            )
        return self._maps[device]

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        n = param.numel()
        if n < self.min_8bit_size:
            state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
            return
        signed, _ = self.maps(param.device)
        n_blocks = math.ceil(n / self.block_size)
        zero_code = int(torch.searchsorted(signed, torch.tensor(0.0, device=param.device)))
        state["exp_avg_code"] = torch.full((n,), zero_code, dtype=torch.uint8, device=param.device)
        state["exp_avg_absmax"] = torch.zeros(n_blocks, device=param.device)
        state["exp_avg_sq_code"] = torch.zeros(n, dtype=torch.uint8, device=param.device)
        state["exp_avg_sq_absmax"] = torch.zeros(n_blocks, device=param.device)

    def _update(self, param: Tensor, grad: Tensor, state: dict[str, Any], h: Hyper) -> None:
        step = float(state["step"])
        work = param if param.dtype == torch.float32 else param.float()
        if "exp_avg" in state:  # a small tensor: fp32 moments
            adamw_update_(work, grad.float(), state["exp_avg"], state["exp_avg_sq"], step, h)
        else:
            flat = work.contiguous().view(-1)  # work itself unless it is not contiguous
            self._update_8bit(flat, grad.float().reshape(-1), state, step, h)
            if not work.is_contiguous():
                work.copy_(flat.view_as(work))
        if work is not param:
            param.copy_(work)

    def _update_8bit(
        self, flat: Tensor, grad: Tensor, state: dict[str, Any], step: float, h: Hyper
    ) -> None:
        """Dequantize, update and requantize a flat parameter CHUNK elements at a time (whole
        blocks), so the fp32 moments of a large embedding never exist all at once. Every
        operation is per element or per block: the result is the same as in one piece."""
        signed, unsigned = self.maps(flat.device)
        bs = self.block_size
        per = bs * max(1, CHUNK // bs)
        for start in range(0, flat.numel(), per):
            rows, blocks = slice(start, start + per), slice(start // bs, (start + per) // bs)
            moments = {}
            for key, qmap in (("exp_avg", signed), ("exp_avg_sq", unsigned)):
                codes, absmax = state[f"{key}_code"][rows], state[f"{key}_absmax"][blocks]
                moments[key] = dequantize_blockwise(codes, absmax, qmap, bs)
            # θ is updated with the fresh fp32 moments; only what is carried over is quantized.
            adamw_update_(
                flat[rows], grad[rows], moments["exp_avg"], moments["exp_avg_sq"], step, h
            )
            for key, qmap, tiny in (("exp_avg", signed, False), ("exp_avg_sq", unsigned, True)):
                codes, absmax = quantize_blockwise(moments[key], qmap, bs, round_up_tiny=tiny)
                state[f"{key}_code"][rows].copy_(codes)
                state[f"{key}_absmax"][blocks].copy_(absmax)

    def _load_entry(self, param: Tensor, entry: dict[str, Any]) -> None:
        """Install saved state after checking it was quantized with this block size."""
        if "exp_avg_code" in entry:
            n, n_blocks = param.numel(), math.ceil(param.numel() / self.block_size)
            for key in ("exp_avg", "exp_avg_sq"):
                codes, absmax = entry[f"{key}_code"], entry[f"{key}_absmax"]
                if codes.numel() != n or absmax.numel() != n_blocks:
                    raise CheckpointError(
                        f"AdamW8bit state for a parameter of {n} elements has {codes.numel()} "
                        f"{key} codes and {absmax.numel()} absmax blocks, expected {n} and "
                        f"{n_blocks} (block_size={self.block_size}); build the optimizer with "
                        "the block_size the state was saved with"
                    )
        super()._load_entry(param, entry)
