"""8-bit AdamW: m and v stored as block-wise 8-bit codes (Dettmers et al. 2022, arXiv:2110.02861).

Each moment is cut into blocks of 256; block b keeps one fp32 absmax A_b and uint8 codes q of
the dynamic tree map (quant/blockwise.py: signed for m, unsigned for v), x ≈ A_b · map[q].
Each step, for a parameter of n ≥ min_8bit_size elements, CHUNK elements (whole blocks) at a time:

    m, v ← dequantize(codes, absmax)           fp32
    AdamW update of θ with m, v in fp32         (adamw.py: torch.optim.AdamW's ops)
    codes, absmax ← quantize(m), quantize(v)   nearest code; a positive v never gets code 0
                                               (a lost second moment would make the step m/ε)

State: 2n bytes of codes + 8·⌈n/256⌉ of absmax, 0.25 + 1/256 ≈ 0.254× fp32 AdamW's 8n.
Smaller tensors (biases, norms) keep fp32 moments and update exactly like torch.optim.AdamW.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError
from lmforge.quant.blockwise import (
    BLOCK_SIZE,
    dequantize_blockwise,
    dynamic_tree_map,
    quantize_blockwise,
)
from lmforge.train.optim.adamw import AdamWBase, Hyper, Params, adamw_update_

MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 moments
CHUNK = 1 << 18  # elements updated at a time: bounds the fp32 working copies of m and v


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
