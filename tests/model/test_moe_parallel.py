"""Expert parallelism: two gloo processes, each holding half of every layer's experts, give the
losses and gradients of the single-process MoE on the same per-rank batches."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from lmforge.model import CausalLM, preset
from lmforge.model.moe import Auxiliary, auxiliary
from lmforge.model.moe_parallel import ExpertParallelMoE, shard_experts

V, WORLD = 97, 2


def model(**overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=V, ffn="moe", n_experts=4, top_k=2, d_ff_expert=32, init_std=0.2)
    return CausalLM(preset("tiny", **{**fields, **overrides})).train()


def batch(rank):
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(10 + rank))
    return {"input_ids": ids, "labels": ids}


def step(m, rank):
    """Loss (LM + MoE auxiliary losses) of this rank's batch, its backward, and the share of
    assignments dropped."""
    collector = Auxiliary()
    with auxiliary(m, collector):
        loss = m(**batch(rank)).loss
    loss = loss + collector.pop_loss()
    loss.backward()
    return loss.detach(), collector.metrics()["drop_rate"]


def expert_grads(m):
    return {
        f"{i}.{name}": getattr(block.mlp.experts, name).grad
        for i, block in enumerate(m.model.layers)
        for name in ("gate_proj", "up_proj", "down_proj")
    }


def worker(rank, rendezvous, out, overrides):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        m = shard_experts(model(**overrides))
        assert all(isinstance(b.mlp, ExpertParallelMoE) for b in m.model.layers)
        loss, _ = step(m, rank)
        tensors = {"loss": loss, "router": m.model.layers[0].mlp.gate.weight.grad}
        tensors |= {f"expert.{k}": g for k, g in expert_grads(m).items()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


CASES = {"capacity": {"capacity_factor": 0.75}, "dropless": {"dropless": True}}


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_two_ranks_match_the_single_process_moe(overrides, tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "rdv"), str(tmp_path), overrides), nprocs=WORLD)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]
    references = []
    for rank in range(WORLD):
        single = model(**overrides)
        loss, dropped = step(single, rank)
        assert (dropped > 0) == ("capacity_factor" in overrides)  # the case drops tokens
        references.append((loss, single.model.layers[0].mlp.gate.weight.grad, expert_grads(single)))
    for rank, got in enumerate(ranks):
        loss, router, _ = references[rank]
        assert torch.allclose(got["loss"], loss, atol=1e-5)
        assert torch.allclose(got["router"], router, atol=1e-5)  # replicated: this rank's own
        local = slice(rank * 2, rank * 2 + 2)  # an expert's gradient: every rank's tokens
        for name in references[0][2]:
            summed = sum(ref[2][name] for ref in references)[local]
            assert torch.allclose(got[f"expert.{name}"], summed, atol=1e-5), name
