"""Mixture-of-Experts feed-forward layer: a router sends each token to k of E SwiGLU experts.

    x ─► gate (router, d → E) ─► softmax p ─► top-k experts e₁..e_k, weights w
    x ─► sorted by expert, C rows each ─► experts (E batched SwiGLUs) ─► Σ_j w_j · E_{e_j}(x)
    x ─► shared expert · σ(shared_expert_gate(x))   (optional, Qwen2-MoE)

Switch Transformer (Fedus et al., 2021) routes each token to its top-1 expert, weighted by
the router probability; GShard and Mixtral route to the top 2 (Mixtral renormalises the two
probabilities, `norm_topk_prob`). Dispatch is a sort, not a loop over tokens: the (N·k)
assignments are ordered by expert (first choices before second ones, then token order),
each expert takes its first C rows into a (E, C, d) buffer, and the experts run as three
batched matmuls over it.

Capacity (training only): C = ⌈capacity_factor · N · k / E⌉. An assignment past its expert's
C-th row is dropped: it adds nothing, so the token goes on through the residual connection.
`dropless` (and every forward in eval mode, so generation never depends on the batch) makes
C the busiest expert's load. Two auxiliary losses keep the router healthy:

    load balance  L_aux = E · Σ_i f_i · P_i     f_i share of assignments to i, P_i mean p_i
                  (1 when balanced; its gradient reaches the router through P)
    router z      L_z   = mean_tokens (log Σ_i exp z_i)²   (ST-MoE: keeps logits small)

A layer adds aux_loss_weight · L_aux + z_loss_weight · L_z and its expert loads to the
`Auxiliary` collector that the training loop attaches (`auxiliary(model, collector)`);
without one (inference, evaluation) nothing is recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.model.config import GATES, WEIGHTINGS, ModelConfig
from lmforge.model.mlp import SwiGLU


class Auxiliary:
    """What MoE layers report during the forward passes of a training run: loss terms (with
    gradients) for the current micro-batch, expert loads (detached) since the last `metrics`."""

    def __init__(self) -> None:
        self.terms: list[Tensor] = []
        self.reset()

    def reset(self) -> None:
        """Forget the statistics (not the pending loss terms)."""
        self.loss_sum, self.steps = 0.0, 0
        self.load: Tensor | None = None  # (E,) assignments per expert, summed over layers
        self.assigned, self.dropped = 0, 0

    def add(self, loss: Tensor, load: Tensor, dropped: Tensor) -> None:
        self.terms.append(loss)
        load = load.detach().double().cpu()
        self.load = load if self.load is None else self.load + load
        self.assigned += int(load.sum())
        self.dropped += int(dropped)

    def pop_loss(self) -> Tensor | None:
        """The sum of the loss terms reported since the last call (None if there were none)."""
        if not self.terms:
            return None
        total = torch.stack([t.float() for t in self.terms]).sum()
        self.terms = []
        self.loss_sum += float(total.detach())
        self.steps += 1
        return total

    def state_dict(self) -> dict[str, Any]:
        """The statistics not yet reported (a checkpoint keeps them: exact resume)."""
        return {
            "loss_sum": self.loss_sum,
            "steps": self.steps,
            "load": None if self.load is None else self.load.tolist(),
            "assigned": self.assigned,
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if state:
            self.loss_sum, self.steps = state["loss_sum"], state["steps"]
            self.assigned, self.dropped = state["assigned"], state["dropped"]
            if state["load"] is not None:
                self.load = torch.tensor(state["load"], dtype=torch.float64)

    def metrics(self) -> dict[str, Any]:
        """Mean auxiliary loss, each expert's share of the assignments and the share dropped,
        over what was reported since the last call; {} when nothing was."""
        if self.load is None:
            return {}
        share = (self.load / self.load.sum().clamp(min=1)).tolist()
        out = {
            "aux_loss": self.loss_sum / max(self.steps, 1),
            "expert_share": [round(s, 5) for s in share],
            "drop_rate": self.dropped / max(self.assigned, 1),
        }
        self.reset()
        return out


@contextmanager
def auxiliary(model: nn.Module, collector: Auxiliary) -> Iterator[Auxiliary]:
    """Within this block, every MoE layer of `model` reports to `collector`."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    for layer in layers:
        layer.collector = collector
    try:
        yield collector
    finally:
        for layer in layers:
            layer.collector = None


class Experts(nn.Module):
    """E SwiGLU experts as stacked weights: gate_proj, up_proj (E, f, d), down_proj (E, d, f)."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int, activation: str = "silu") -> None:
        super().__init__()
        self.act = GATES.get(activation)
        self.gate_proj = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.up_proj = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_ff))

    def forward(self, x: Tensor) -> Tensor:
        """x (E, C, d): row block e goes through expert e; returns (E, C, d)."""
        gate = torch.bmm(x, self.gate_proj.transpose(1, 2))  # (E, C, f)
        up = torch.bmm(x, self.up_proj.transpose(1, 2))
        return torch.bmm(self.act(gate, up), self.down_proj.transpose(1, 2))  # (E, C, d)


@WEIGHTINGS.register("router")
def router_weights(top: Tensor) -> Tensor:
    """The chosen experts' router probabilities (N, k) weight their outputs."""
    return top


@WEIGHTINGS.register("ones")
def unit_weights(top: Tensor) -> Tensor:
    """Every chosen expert counts once (MoEfication: the experts are parts of one FFN)."""
    return torch.ones_like(top)


def expert_load(expert: Tensor, n_experts: int) -> Tensor:
    """Assignments per expert (E,) of the chosen experts (N, k)."""
    return torch.bincount(expert.reshape(-1), minlength=n_experts)


class Routing:
    """Where each of the N·k assignments goes: sorted by expert, its row in the expert's
    buffer, whether it fits the capacity."""

    def __init__(self, expert: Tensor, weight: Tensor, load: Tensor, capacity: int) -> None:
        N, k = expert.shape  # expert, weight (N, k); load (E,) from expert_load
        flat = expert.t().reshape(-1)  # (k·N,) first choices of every token, then second ones
        self.order = torch.argsort(flat, stable=True)  # by expert, then choice, then token
        self.expert = flat[self.order]  # (k·N,)
        self.token = torch.arange(N, device=expert.device).repeat(k)[self.order]
        self.weight = weight.t().reshape(-1)[self.order]
        self.load = load
        starts = torch.cumsum(load, 0) - load
        row = torch.arange(len(flat), device=expert.device) - starts[self.expert]
        self.capacity = capacity
        keep = row < capacity
        self.dropped = (~keep).sum()
        self.slot = (self.expert * self.capacity + row)[keep]  # row in the (E·C, d) buffer
        self.token, self.weight = self.token[keep], self.weight[keep]

    def dispatch(self, h: Tensor, n_experts: int) -> Tensor:
        """Rows of h (N, d) into the expert buffer (E, C, d); empty rows are zero."""
        d = h.shape[-1]
        # gather / scatter over expanded indices: their backward passes are scatter_add and
        # gather, which run many times faster on CPUs than index_add's
        rows = h.gather(0, self.token[:, None].expand(-1, d))  # (M, d) kept assignments
        buffer = h.new_zeros(n_experts * self.capacity, d)
        return buffer.scatter(0, self.slot[:, None].expand(-1, d), rows).view(n_experts, -1, d)

    def combine(self, out: Tensor, N: int) -> Tensor:
        """Expert outputs (E, C, d) back to tokens (N, d), weighted and summed over choices."""
        d = out.shape[-1]
        rows = out.reshape(-1, d).gather(0, self.slot[:, None].expand(-1, d))  # (M, d)
        rows = rows * self.weight[:, None].to(out.dtype)
        return out.new_zeros(N, d).scatter_add(0, self.token[:, None].expand(-1, d), rows)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (optionally plus a shared expert); see the module docstring.

    Names follow transformers' Mixtral / Qwen2-MoE layers: `mlp.gate` is the router,
    `mlp.experts.{gate,up,down}_proj` the stacked experts, `mlp.shared_expert(_gate)`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.norm_topk_prob = config.norm_topk_prob
        self.weighting = WEIGHTINGS.get(config.expert_weights)
        self.capacity_factor, self.dropless = config.capacity_factor, config.dropless
        self.aux_loss_weight, self.z_loss_weight = config.aux_loss_weight, config.z_loss_weight
        self.gate = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = Experts(
            config.n_experts, config.d_model, config.d_ff_expert, config.activation
        )
        if config.shared_expert_d_ff:
            self.shared_expert = SwiGLU(config.replace(d_ff=config.shared_expert_d_ff))
            self.shared_expert_gate = nn.Linear(config.d_model, 1, bias=False)
        self.collector: Auxiliary | None = None

    def active_expert_parameters(self) -> int:
        """Expert weights one token is multiplied by: those of its top_k experts."""
        return self.top_k * sum(p[0].numel() for p in self.experts.parameters())

    def capacity(self, n_tokens: int, load: Tensor) -> int:
        """Rows per expert: the training capacity, or (dropless, eval) the busiest expert's."""
        if self.dropless or not self.training:
            return int(load.max())
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def route(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router logits (N, E) float, chosen experts (N, k) and their weights (N, k)."""
        logits = self.gate(h).float()  # (N, E)
        probs = logits.softmax(dim=-1)
        top, expert = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, expert, self.weighting(top)

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        h = x.reshape(-1, d)  # (N, d)
        logits, expert, weight = self.route(h)
        load = expert_load(expert, self.n_experts)
        routing = Routing(expert, weight, load, self.capacity(len(h), load))
        out = self.run_experts(routing.dispatch(h, self.n_experts))  # (E, C, d)
        y = routing.combine(out, len(h))  # (N, d)
        if hasattr(self, "shared_expert"):
            y = y + torch.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)
        if self.collector is not None:
            self.report(logits, routing)
        return y.view(B, T, d)

    def run_experts(self, buffer: Tensor) -> Tensor:
        """Expert e on row block e of the dispatch buffer (E, C, d)."""
        return self.experts(buffer)

    def report(self, logits: Tensor, routing: Routing) -> None:
        """The auxiliary losses of this forward and its expert loads, to the collector."""
        probs = logits.softmax(dim=-1)  # (N, E)
        share = routing.load.float() / routing.load.sum()  # f_i
        balance = self.n_experts * (share * probs.mean(dim=0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        loss = self.aux_loss_weight * balance + self.z_loss_weight * z
        self.collector.add(loss, routing.load, routing.dropped)
