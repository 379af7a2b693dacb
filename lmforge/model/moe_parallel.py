"""Expert parallelism (GShard, FastMoE; Pathways' sparse experts across devices): each rank of
a process group holds E / world of a layer's experts, and tokens travel to the rank of their
expert and back with two all_to_all exchanges.

    rank r:  tokens ─► router (replicated) ─► dispatch buffer (E, C, d), experts in rank order
             ──all_to_all──► (world, E/world, C, d): every rank's rows for my experts
             ─► my experts on (E/world, world·C, d)
             ──all_to_all──► (E, C, d) back where the rows came from ─► combine ─► tokens

Every rank routes its own tokens exactly as the single-process MoE would (capacity from its
own batch; dropless and eval take the largest load over the group, so that the exchanged
blocks have one size), so per-rank outputs and losses match the single-process layer, and an
expert's gradient sums what every rank's tokens sent it. The router, the shared expert and
every other parameter stay replicated (data parallel). `shard_experts(model)` swaps every MoE
layer of a model for its sharded form on this rank; parameter names stay those of MoE
(`mlp.experts.gate_proj` holds this rank's experts).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.moe import Experts, MoE
from lmforge.model.targets import replace_module


class _AllToAll(torch.autograd.Function):
    """all_to_all of equal row blocks; its gradient is the same exchange in reverse."""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _AllToAll.apply(grad.contiguous(), ctx.group), None


def all_to_all(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Row block i of x (world equal blocks) goes to rank i; block j of the result came from
    rank j. Differentiable."""
    return _AllToAll.apply(x, group)


class ExpertParallelMoE(MoE):
    """A MoE layer whose experts are sharded over `group`: this rank keeps experts
    [rank·E/world, (rank+1)·E/world) and exchanges rows with the others."""

    def __init__(self, moe: MoE, group: dist.ProcessGroup | None = None) -> None:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if moe.n_experts % world:
            raise ConfigError(
                f"{moe.n_experts} experts do not split over {world} ranks; choose "
                "model.n_experts as a multiple of the world size"
            )
        local = moe.n_experts // world
        with torch.device("meta"):  # every weight comes from `moe` below
            super().__init__(moe.config.replace(n_experts=local))
        self.config, self.n_experts = moe.config, moe.n_experts  # routing over all experts
        self.group, self.world, self.local = group, world, local
        self.gate = moe.gate
        if hasattr(moe, "shared_expert"):
            self.shared_expert, self.shared_expert_gate = moe.shared_expert, moe.shared_expert_gate
        c = moe.config
        self.experts = Experts(local, c.d_model, c.d_ff_expert, c.activation)
        mine = slice(rank * local, (rank + 1) * local)
        for name in ("gate_proj", "up_proj", "down_proj"):
            shard = getattr(moe.experts, name).detach()[mine].clone()
            setattr(self.experts, name, nn.Parameter(shard))
        self.train(moe.training)

    def capacity(self, n_tokens: int, load: Tensor) -> int:
        """One capacity for the group: the exchanged blocks must have one size."""
        c = torch.tensor(super().capacity(n_tokens, load))
        dist.all_reduce(c, op=dist.ReduceOp.MAX, group=self.group)
        return int(c)

    def run_experts(self, buffer: Tensor) -> Tensor:
        E, C, d = buffer.shape  # rank r's experts in row block r
        mine = all_to_all(buffer.reshape(-1, d), self.group)  # (world·E_local·C, d)
        mine = mine.view(self.world, self.local, C, d).transpose(0, 1)  # (E_local, world, C, d)
        out = self.experts(mine.reshape(self.local, self.world * C, d))  # (E_local, world·C, d)
        out = out.view(self.local, self.world, C, d).transpose(0, 1).reshape(-1, d)
        return all_to_all(out, self.group).view(E, C, d)  # back where the rows came from


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every MoE layer of `model` (in place) by its expert-parallel form on this rank."""
    names = [name for name, m in model.named_modules() if type(m) is MoE]
    if not names:
        raise ConfigError("the model has no MoE layers to shard (model.ffn=moe)")
    for name in names:
        replace_module(model, name, ExpertParallelMoE(model.get_submodule(name), group))
    return model
