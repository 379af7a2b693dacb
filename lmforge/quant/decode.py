"""Weight-only integer linear layers for fast CPU decoding (8-bit and 4-bit).

Decoding reads every weight once per step for a handful of rows, so its speed is memory
bandwidth: fp32 weights cost 4 bytes each, 8-bit one byte, 4-bit half a byte. Both formats
keep a scale and a zero point per group of `group_size` inputs of each output row (min/max,
asymmetric): one scale per whole row lets a single outlier weight coarsen its row, which in
SmolLM2 (weights rounded, products in fp32) changed 64-token greedy replies on 7 of 8 prompts
at 8 bits.

    4-bit (Int4Linear):  w[n, k] ≈ w₁ = scale[g, n] · (q[n, k] − 8) + zero[g, n],   q ∈ [0, 15]
    8-bit (Int8Linear):  w[n, k] ≈ w₁ + w₂,  w₂ the same 4-bit code of the residual w − w₁

The products run in PyTorch's weight-only CPU kernel `torch._weight_int4pack_mm_for_cpu`
(the one torchao and gpt-fast use), which widens the codes inside the matmul loop and never
writes a float weight out; 8-bit is two passes, one per 4-bit plane, still one byte per
weight read. The kernel takes scales and zero points in bfloat16. A uniform 8-bit grid
with bfloat16 scales loses what makes min/max grids good: with an fp32 scale a group's
smallest and largest weights (its outliers) sit exactly on the grid, with a bfloat16 one
they are off by up to half a step; SmolLM2's logits then moved 3.6× further from fp32's
(mean |Δ| 0.090 against 0.025). The residual plane has no such cost, because its own grid
is 15× finer than the first plane's and its rounding errors are that much smaller
(0.030). The kernel's vectorised path takes bfloat16 activations (fp32 ones take a scalar
loop 10–20× slower than an fp32 matmul on this machine's AVX-512), so each product's input
and output are rounded to bfloat16 and the result is returned in the input's dtype; each
rounding adds about as much logit error as the codes (docs/serving.md).
lmforge's NF4Linear is the training format (QLoRA): it rebuilds a float weight each call,
right for backward and slower than fp32 for decoding. `quantize_for_decoding(model, kind)`
swaps every linear layer of a native model, the head included; the input embedding stays
in float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.registry import Registry

KERNEL_DTYPE = torch.bfloat16  # the kernel's vectorised path (see the module doc)


def group_codes(
    weight: Tensor, group_size: int, levels: int, mid: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Min/max codes per group of inputs on the kernel's own grid: (q (N, K) int32 in
    [0, levels), scale (N, G), zero (N, G)) with weight ≈ scale·(q − mid) + zero, where scale
    and zero are bfloat16 values (the kernel reads them so), chosen before the codes are."""
    N, K = weight.shape
    if K % group_size:
        raise ConfigError(f"integer layers need in_features divisible by {group_size}, got {K}")
    groups = weight.detach().float().view(N, K // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = _bf16((high - low).clamp(min=1e-8) / (levels - 1))
    zero = _bf16(low + mid * scale)
    q = torch.round((groups - zero[..., None]) / scale[..., None]) + mid
    return q.clamp(0, levels - 1).to(torch.int32).view(N, K), scale, zero


def _bf16(t: Tensor) -> Tensor:
    return t.to(KERNEL_DTYPE).float()


class _Planes(nn.Module):
    """4-bit planes of one weight, summed: y = Σ_p x·(scale_p·(q_p − 8) + zero_p)ᵀ (+ bias)."""

    def __init__(self, planes: list[tuple[Tensor, Tensor, Tensor]], bias: Tensor | None) -> None:
        super().__init__()
        q0, scale0, _ = planes[0]
        self.out_features, self.in_features = q0.shape
        self.group_size = self.in_features // scale0.shape[1]
        for i, (q, scale, zero) in enumerate(planes):
            self.register_buffer(f"packed{i}", torch._convert_weight_to_int4pack_for_cpu(q, 1))
            sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()  # (G, N, 2)
            self.register_buffer(f"scales_zeros{i}", sz.to(KERNEL_DTYPE))
        self.planes = len(planes)
        self.compute_dtype = torch.float32  # outputs in the input's dtype: bfloat16 is inside
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).to(KERNEL_DTYPE)  # (M, K)
        y = None
        for i in range(self.planes):
            packed, sz = getattr(self, f"packed{i}"), getattr(self, f"scales_zeros{i}")
            part = torch._weight_int4pack_mm_for_cpu(rows, packed, self.group_size, sz).float()
            y = part if y is None else y + part
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class Int4Linear(_Planes):
    """nn.Linear with 4-bit weights, a scale and zero point per group of inputs."""

    def __init__(self, weight: Tensor, bias: Tensor | None, group_size: int = 32) -> None:
        super().__init__([group_codes(weight, group_size, 16, 8)], bias)


class Int8Linear(_Planes):
    """nn.Linear with 8-bit weights per group of inputs: a 4-bit code and a 4-bit code of
    what it leaves (module doc)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, group_size: int = 32) -> None:
        first = group_codes(weight, group_size, 16, 8)
        rest = group_codes(weight.detach().float() - dequantize(*first), group_size, 16, 8)
        super().__init__([first, rest], bias)


def dequantize(q: Tensor, scale: Tensor, zero: Tensor, mid: int = 8) -> Tensor:
    """The weight (N, K) that group codes stand for: scale·(q − mid) + zero per group."""
    N, K = q.shape
    groups = q.view(N, scale.shape[1], -1).float()
    return ((groups - mid) * scale[..., None] + zero[..., None]).view(N, K)


@dataclass(frozen=True)
class DecodeFormat:
    make: Callable[[Tensor, Tensor | None, int], nn.Module]  # (weight, bias, group) → layer
    fits: Callable[[Tensor, int], bool]  # whether the kernel takes this weight shape


DECODE_FORMATS: Registry[DecodeFormat] = Registry("decoding quantization")


def _packable(weight: Tensor, group_size: int) -> bool:
    """The packing kernel takes rows in multiples of 16 and inputs in whole groups."""
    return weight.shape[0] % 16 == 0 and weight.shape[1] % group_size == 0


DECODE_FORMATS.add("int8", DecodeFormat(Int8Linear, _packable))
DECODE_FORMATS.add("int4", DecodeFormat(Int4Linear, _packable))


@torch.no_grad()
def quantize_for_decoding(model: nn.Module, kind: str, group_size: int = 32) -> list[str]:
    """Swap every nn.Linear of `model` (a native decoder: blocks and head) for `kind`'s
    integer layer, in place, for inference only; returns the names swapped (a layer whose
    shape the kernel does not take stays in float)."""
    if kind not in DECODE_FORMATS:
        raise ConfigError(
            f"unknown decoding quantization {kind!r}",
            fix="choose {quantize} from " + ", ".join(DECODE_FORMATS.names()),
        )
    fmt = DECODE_FORMATS.get(kind)
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and fmt.fits(module.weight, group_size):
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, attr, fmt.make(module.weight, module.bias, group_size))
            swapped.append(name)
    return swapped
