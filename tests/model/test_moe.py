"""The mixture-of-experts FFN: sorted dispatch against a per-token reference, capacity and
dropping, the auxiliary losses, and the MoE model inside the loop, generation and caches."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.mlp import SwiGLU
from lmforge.model.moe import Auxiliary, MoE, auxiliary

V = 97


def moe_config(**overrides):
    fields = dict(vocab_size=V, ffn="moe", n_experts=4, top_k=2, d_ff_expert=48)
    return preset("tiny", **{**fields, **overrides})


def layer(seed: int = 0, **overrides) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(moe_config(**overrides))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe


def expert(moe: MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    w = moe.experts
    return (F.silu(x @ w.gate_proj[e].t()) * (x @ w.up_proj[e].t())) @ w.down_proj[e].t()


def reference(moe: MoE, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token: Σ over chosen experts of weight · expert(x), skipping assignments that
    find their expert full (first choices of all tokens first, then second choices)."""
    h = x.reshape(-1, x.shape[-1])
    probs = moe.gate(h).float().softmax(-1)
    top, chosen = probs.topk(moe.top_k, dim=-1)
    if moe.norm_topk_prob:
        top = top / top.sum(-1, keepdim=True)
    used = [0] * moe.n_experts
    out = torch.zeros_like(h)
    for j in range(moe.top_k):
        for n in range(len(h)):
            e = int(chosen[n, j])
            if capacity is not None and used[e] >= capacity:
                continue
            used[e] += 1
            out[n] += top[n, j] * expert(moe, e, h[n])
    return out.view_as(x)


def inputs(B=2, T=7, d=64, seed=1):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("top_k,norm", [(1, False), (2, False), (2, True), (3, True)])
def test_sorted_dispatch_equals_the_per_token_reference(top_k, norm):
    moe = layer(top_k=top_k, norm_topk_prob=norm).eval()
    x = inputs()
    with torch.no_grad():
        assert torch.allclose(moe(x), reference(moe, x), atol=1e-5)


def test_capacity_drops_the_late_assignments_and_they_add_nothing():
    moe = layer(capacity_factor=0.5).train()  # C = ⌈0.5 · 14 · 2 / 4⌉ = 4 rows per expert
    x = inputs()
    collector = Auxiliary()
    with torch.no_grad(), auxiliary(moe, collector):
        y = moe(x)
    assert moe.capacity(14, torch.tensor([9, 7, 6, 6])) == 4
    assert torch.allclose(y, reference(moe, x, capacity=4), atol=1e-5)
    assert collector.dropped == 28 - int(collector.load.clamp(max=4).sum()) > 0
    assert not torch.allclose(y, reference(moe, x), atol=1e-3)  # dropping changed the output


def test_dropless_training_and_eval_never_drop():
    for moe in (layer(capacity_factor=0.5, dropless=True).train(), layer().eval()):
        collector = Auxiliary()
        with torch.no_grad(), auxiliary(moe, collector):
            y = moe(inputs())
        assert collector.dropped == 0
        assert torch.allclose(y, reference(moe, inputs()), atol=1e-5)


def test_switch_top1_weights_the_expert_by_its_probability():
    moe = layer(top_k=1).eval()
    x = inputs(B=1, T=3)
    with torch.no_grad():
        h = x[0]
        p = moe.gate(h).softmax(-1)
        e = p.argmax(-1)
        manual = torch.stack([p[n, e[n]] * expert(moe, int(e[n]), h[n]) for n in range(3)])
        assert torch.allclose(moe(x)[0], manual, atol=1e-6)


def test_one_expert_with_unit_weight_is_the_dense_swiglu():
    moe = layer(n_experts=1, top_k=1, expert_weights="ones", d_ff_expert=96).eval()
    dense = SwiGLU(moe_config(d_ff=96))
    with torch.no_grad():
        dense.gate_proj.weight.copy_(moe.experts.gate_proj[0])
        dense.up_proj.weight.copy_(moe.experts.up_proj[0])
        dense.down_proj.weight.copy_(moe.experts.down_proj[0])
        assert torch.allclose(moe(inputs()), dense(inputs()), atol=1e-6)


def test_auxiliary_losses_are_the_switch_balance_and_the_router_z_loss():
    moe = layer(aux_loss_weight=0.5, z_loss_weight=0.25).train()
    x = inputs()
    collector = Auxiliary()
    with auxiliary(moe, collector):
        moe(x)
    loss = collector.pop_loss()
    logits = moe.gate(x.reshape(-1, 64)).float()
    probs = logits.softmax(-1)
    chosen = probs.topk(2, dim=-1).indices
    share = torch.bincount(chosen.reshape(-1), minlength=4).float() / chosen.numel()
    balance = 4 * (share * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).pow(2).mean()
    assert torch.allclose(loss, 0.5 * balance + 0.25 * z, atol=1e-6)
    loss.backward()
    assert moe.gate.weight.grad.abs().sum() > 0  # the balance loss reaches the router
    assert collector.pop_loss() is None  # terms are handed out once
    metrics = collector.metrics()
    assert metrics["expert_share"] == pytest.approx(share.tolist(), abs=1e-5)
    assert metrics["drop_rate"] == 0.0 and collector.metrics() == {}


def test_no_collector_no_report():
    moe = layer().train()
    moe(inputs())  # nothing attached: nothing recorded, nothing raised
    assert moe.collector is None


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.top_k must be in 1..model.n_experts"):
        moe_config(top_k=5).validate()
    with pytest.raises(ConfigError, match="set norm_topk_prob=False"):
        moe_config(top_k=1, norm_topk_prob=True).validate()
    with pytest.raises(ConfigError, match="model.ffn 'sparse' is unknown.*'dense', 'moe'"):
        moe_config(ffn="sparse").validate()


def moe_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CausalLM(moe_config(init_std=0.3, tie_embeddings=False, **overrides)).eval()


def test_eval_output_of_a_row_does_not_depend_on_the_batch():
    model = moe_model()
    ids = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        together = model(ids).logits
        alone = model(ids[1:2]).logits
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_cached_generation_equals_full_recomputation():
    model = moe_model()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    results = generate(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0))
    for prompt, result in zip(prompts, results):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert result.token_ids == ids[len(prompt) :]


def test_flops_count_the_active_experts_only():
    dense = CausalLM(preset("tiny", vocab_size=V, d_ff=96))
    moe = CausalLM(moe_config(top_k=2, d_ff_expert=48))  # two active halves = one dense FFN
    router = 2 * moe.config.n_experts * moe.config.d_model  # the routers' weights, 2 layers
    assert moe.flops_per_token(16, training=False) == dense.flops_per_token(16, False) + 2 * router


def test_the_loop_adds_the_aux_loss_and_logs_expert_loads(tmp_path):
    from lmforge.data import PackedBatches
    from lmforge.train import TrainConfig, train

    tokens = torch.randint(0, V, (4000,), generator=torch.Generator().manual_seed(0)).numpy()
    config = TrainConfig(
        max_steps=4, batch_size=4, warmup_steps=0, log_every=2, eval_every=0, device="cpu"
    )
    routers = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = CausalLM(moe_config(aux_loss_weight=weight, z_loss_weight=0.0, dropless=False))
        run = tmp_path / f"w{weight}"
        train(model, PackedBatches(tokens, 16, 4, seed=0), config, run, progress=False)
        routers[weight] = model.model.layers[0].mlp.gate.weight.detach().clone()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logged = [r for r in rows if "loss" in r]
        assert [r["step"] for r in logged] == [2, 4]
        for r in logged:
            assert len(r["expert_share"]) == 4
            assert sum(r["expert_share"]) == pytest.approx(1, abs=1e-4)
            assert 0.0 <= r["drop_rate"] < 1.0
            assert (r["aux_loss"] > 0) == (weight > 0)
        assert (run / "experts.png").stat().st_size > 1000
    assert not torch.equal(routers[0.0], routers[10.0])  # the weighted loss moved the router
