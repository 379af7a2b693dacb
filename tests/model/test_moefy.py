"""MoEfication: balanced clusters, an exact split with every expert on, routers that pick the
experts that matter, and the MoEfied model saved, loaded and generating like any model."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.hf import load_hf_dir, save_hf_dir
from lmforge.model.moefy import balanced_kmeans, expert_coverage, ffn_inputs, moefy, set_top_k

V = 97


def dense(activation="relu", seed=0):
    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=V, d_ff=128, activation=activation, init_std=0.1)
    return CausalLM(config).eval()


def batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (4, 32), generator=g) for _ in range(n)]


def test_balanced_kmeans_gives_equal_clusters_and_finds_separated_groups():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    points = centres.repeat_interleave(6, 0) + 0.3 * torch.randn(24, 2, generator=g)
    labels = balanced_kmeans(points, 4)
    assert torch.bincount(labels).tolist() == [6, 6, 6, 6]
    for group in range(4):  # each true group lands in one cluster
        assert len(set(labels[group * 6 : group * 6 + 6].tolist())) == 1


@pytest.mark.parametrize("clustering", ["weights", "coactivation"])
def test_every_expert_on_is_the_dense_model(clustering):
    model = dense()
    moe = moefy(
        model, batches(), experts=8, top_k=8, clustering=clustering, router_steps=5, progress=False
    )
    assert moe.config.ffn == "moe" and moe.config.d_ff_expert == 16
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        assert torch.allclose(moe(x).logits, model(x).logits, atol=1e-5)


def overlap_with_the_best_experts(moe, dense_model, x):
    """Share of each token's routed top-k that are among its k experts of largest Σ|activation|
    (what the router is trained to find), in the first layer."""
    h = ffn_inputs(dense_model, [x])[0]  # (N, d)
    layer = moe.model.layers[0].mlp
    w = layer.experts
    gate, up = (torch.einsum("nd,efd->nef", h, p) for p in (w.gate_proj, w.up_proj))
    best = w.act(gate, up).abs().sum(-1).topk(layer.top_k, -1).indices  # (N, k)
    routed = layer.gate(h).topk(layer.top_k, -1).indices
    return (best[:, :, None] == routed[:, None, :]).any(-1).float().mean().item()


def test_trained_routers_find_the_experts_that_fire():
    model = dense()
    data = batches(8)
    trained = moefy(model, data, experts=8, top_k=2, router_steps=100, progress=False)
    untrained = moefy(model, data, experts=8, top_k=2, router_steps=0, progress=False)
    x = batches(1, seed=7)[0]
    hit = overlap_with_the_best_experts(trained, model, x)
    chance = overlap_with_the_best_experts(untrained, model, x)
    assert hit > 0.5 and hit > 2 * chance  # chance is about k / E = 0.25


def test_expert_coverage_is_the_activation_mass_in_the_picked_experts():
    model = dense()
    moe = moefy(model, batches(8), experts=8, top_k=2, router_steps=100, progress=False)
    h = ffn_inputs(model, batches(1, seed=7))[0]
    layer = moe.model.layers[0].mlp
    w = layer.experts
    gate, up = (torch.einsum("nd,efd->nef", h, p) for p in (w.gate_proj, w.up_proj))
    mass = w.act(gate, up).abs().sum(-1)  # (N, E)
    share = mass / mass.sum(-1, keepdim=True)
    routed = layer.gate(h).topk(2, -1).indices
    coverage = expert_coverage(layer, h)
    assert coverage["router"] == pytest.approx(share.gather(1, routed).sum(-1).mean().item())
    assert coverage["oracle"] == pytest.approx(share.topk(2, -1).values.sum(-1).mean().item())
    assert coverage["router"] <= coverage["oracle"] < 1
    set_top_k(moe, 8)
    assert expert_coverage(layer, h) == pytest.approx({"router": 1.0, "oracle": 1.0})


def test_set_top_k_moves_between_sparse_and_dense():
    model = dense(activation="silu")
    moe = moefy(model, batches(), experts=4, top_k=1, router_steps=20, progress=False)
    x = batches(1, seed=3)[0]
    with torch.no_grad():
        sparse = moe(x).logits
        set_top_k(moe, 4)
        assert moe.config.top_k == 4
        assert torch.allclose(moe(x).logits, model(x).logits, atol=1e-5)
        assert not torch.allclose(sparse, model(x).logits, atol=1e-3)
    with pytest.raises(ConfigError, match="top_k=5"):
        set_top_k(moe, 5)


def test_a_moefied_model_saves_loads_and_generates(tmp_path):
    moe = moefy(dense(), batches(), experts=4, top_k=2, router_steps=20, progress=False)
    save_hf_dir(moe, tmp_path)
    back = load_hf_dir(tmp_path)
    assert back.config == moe.config and back.config.expert_weights == "ones"
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    assert generate(back, [[1, 2, 3]], config) == generate(moe, [[1, 2, 3]], config)


def test_refusals_name_the_problem():
    with pytest.raises(ConfigError, match="d_ff=128 neurons do not split into 3"):
        moefy(dense(), batches(1), experts=3, top_k=1, progress=False)
    moe = moefy(dense(), batches(1), experts=4, top_k=1, router_steps=1, progress=False)
    with pytest.raises(ConfigError, match="splits dense FFNs"):
        moefy(moe, batches(1), experts=2, top_k=1)
    with pytest.raises(Exception, match="unknown MoEfication clustering 'spectral'"):
        moefy(dense(), batches(1), experts=4, top_k=1, clustering="spectral", progress=False)
