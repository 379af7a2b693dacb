"""Weight-only integer linear layers for fast CPU decoding (int8 and 4-bit).

Decoding reads every weight once per step for a handful of rows, so its speed is memory
bandwidth: fp32 weights cost 4 bytes each, int8 one byte, 4-bit half a byte. The product runs
in PyTorch's weight-only kernels, which widen the codes inside the matmul loop (the float
weight is never written out):

    int8  (Int8Linear):  w[n, k] = scale[n] · q[n, k],  q ∈ [-127, 127]      per output row
    4-bit (Int4Linear):  w[n, k] = scale[g, n] · (q[n, k] − 8) + zero[g, n],  q ∈ [0, 15]
                         per group g of `group_size` inputs (asymmetric min/max)

`torch._weight_int8pack_mm` and `torch._weight_int4pack_mm_for_cpu` are those kernels (the
ones torchao and gpt-fast use). lmforge's NF4Linear is the training format (QLoRA): it
rebuilds a float weight each call, which is right for backward and slower than fp32 for
decoding, so it is not used here. `quantize_for_decoding(model, bits)` swaps every linear
layer of a native model, the head included; the input embedding stays in float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.registry import Registry


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and one scale per output row (symmetric)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # (N,)
        self.register_buffer("qweight", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("scales", scale.to(weight.dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def dequantize(self) -> Tensor:
        return self.qweight.float() * self.scales.float()[:, None]  # (N, K)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)  # (M, K)
        y = torch._weight_int8pack_mm(rows, self.qweight, self.scales)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """nn.Linear with 4-bit weights, an fp32 scale and zero point per group of inputs."""

    def __init__(self, weight: Tensor, bias: Tensor | None, group_size: int = 32) -> None:
        super().__init__()
        N, K = weight.shape
        if K % group_size:
            raise ConfigError(f"4-bit layers need in_features divisible by {group_size}, got {K}")
        self.out_features, self.in_features, self.group_size = N, K, group_size
        groups = weight.detach().float().view(N, K // group_size, group_size)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, G)
        scale = (high - low).clamp(min=1e-8) / 15
        codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        codes = codes.to(torch.int32).view(N, K)
        zero = low + 8 * scale  # w = scale·(q − 8) + zero
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(codes, 1))
        self.register_buffer(
            "scales_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
        )
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


@dataclass(frozen=True)
class DecodeFormat:
    make: Callable[[Tensor, Tensor | None, int], nn.Module]  # (weight, bias, group) → layer
    fits: Callable[[Tensor, int], bool]  # whether the kernel takes this weight shape


DECODE_FORMATS: Registry[DecodeFormat] = Registry("decoding quantization")
DECODE_FORMATS.add("int8", DecodeFormat(lambda w, b, g: Int8Linear(w, b), lambda w, g: True))
DECODE_FORMATS.add(
    "int4",  # the packing kernel takes rows in multiples of 16, inputs in whole groups
    DecodeFormat(Int4Linear, lambda w, g: w.shape[0] % 16 == 0 and w.shape[1] % g == 0),
)


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
