"""RMSNorm and the SwiGLU feed-forward block (Shazeer, 2020).

x ─► gate_proj ─► SiLU ─┐
                        ×─► down_proj
x ─► up_proj ───────────┘

`model.activation` picks the gate's nonlinearity (the GATES registry): SiLU (SwiGLU, what
Llama-family checkpoints use) or ReLU (ReGLU: most gate outputs are exactly zero, the sparse
activations MoEfication builds on).

SiLU(g) · u is one autograd node that keeps only g and u for backward and recomputes the
sigmoid there, instead of also keeping SiLU(g): one (N, d_ff) tensor less per layer in a
training step, at the cost of one sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.config import GATES, ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) · g (Zhang & Sennrich, 2019), computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 == self.weight.dtype:  # one fused op, the same bits
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        # aten's fused SiLU derivative, σ(g) (1 + g (1 − σ(g))), in one pass over g
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad * F.silu(gate)


@GATES.register("silu")
def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate) · up, saving only its inputs for backward."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _SiluMul.apply(gate, up)
    return F.silu(gate) * up


@GATES.register("relu")
def relu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """ReLU(gate) · up."""
    return F.relu(gate) * up


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = GATES.get(config.activation)

    def hidden(self, x: Tensor) -> Tensor:
        """act(x W_gate) · x W_up, the (…, d_ff) activations down_proj reads."""
        return self.act(self.gate_proj(x), self.up_proj(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.hidden(x))
