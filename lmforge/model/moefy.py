"""MoEfication (Zhang et al., 2022): a trained dense FFN split into experts, plus a router.

A gated FFN is a sum over its d_ff neurons, so for any partition of them into sets S_1..S_E

    FFN(x) = W_down · (act(W_gate x) ⊙ W_up x)
           = Σ_e W_down[:, S_e] · (act(W_gate[S_e] x) ⊙ W_up[S_e] x)

and with every expert on, the MoE is the dense model exactly. Neurons that fire together are
grouped into E experts of d_ff / E neurons (balanced k-means), and a light router per layer
learns, from the dense model's own activations on a corpus, which experts carry a token's
output; at inference only its top k run, summed with weight 1 (expert_weights = ones: the
experts are parts of one sum, not alternatives). The share of FFN parameters a token uses
is k / E.

    clustering  weights        neuron i ↦ [w_gate,i ; w_up,i], normalised
                coactivation   neuron i ↦ its activations on sampled tokens, normalised
    router      Linear(d, E) per layer, trained (the model frozen) with cross-entropy against
                each token's shares of Σ|activation| over the experts

The paper's claim holds for ReLU models, whose activations are mostly exact zeros; a SiLU
(SwiGLU) model's are small but not zero, which the lab measures (lab/moefication.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmforge.errors import ConfigError
from lmforge.model.gpt import CausalLM
from lmforge.model.mlp import SwiGLU
from lmforge.model.moe import MoE
from lmforge.registry import Registry


def balanced_kmeans(points: Tensor, k: int, iters: int = 15, seed: int = 0) -> Tensor:
    """Cluster labels (n,) of points (n, f) into k clusters of exactly n / k points each.

    Lloyd's iterations with a balanced assignment step: the (point, centroid) pairs are taken
    closest first, and a pair is kept while its point is free and its cluster not full."""
    n = len(points)
    size = n // k
    g = torch.Generator().manual_seed(seed)
    centroids = points[torch.randperm(n, generator=g)[:k]].clone()  # (k, f)
    labels = torch.empty(n, dtype=torch.long)
    for _ in range(iters):
        distance = torch.cdist(points, centroids)  # (n, k)
        order = distance.flatten().argsort().tolist()
        labels.fill_(-1)
        room = [size] * k
        left = n
        for pair in order:
            point, cluster = divmod(pair, k)
            if labels[point] < 0 and room[cluster]:
                labels[point] = cluster
                room[cluster] -= 1
                left -= 1
                if not left:
                    break
        centroids = torch.stack([points[labels == c].mean(0) for c in range(k)])
    return labels


# How neurons are described before clustering: (mlp, sampled FFN inputs (N, d)) → (d_ff, f).
FEATURES: Registry[Callable[[SwiGLU, Tensor], Tensor]] = Registry("MoEfication clustering")


@FEATURES.register("weights")
def weight_features(mlp: SwiGLU, inputs: Tensor) -> Tensor:
    """Each neuron's gate and up weight rows, side by side."""
    return torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=1)  # (d_ff, 2d)


@FEATURES.register("coactivation")
def coactivation_features(mlp: SwiGLU, inputs: Tensor) -> Tensor:
    """Each neuron's activations on the sampled tokens: neurons that fire together are close."""
    return mlp.hidden(inputs).t()  # (d_ff, N)


def expert_importance(mlp: SwiGLU, inputs: Tensor, groups: Tensor) -> Tensor:
    """Σ|activation| of each expert's neurons per token: (N, E); groups (E, d_ff / E)."""
    hidden = mlp.hidden(inputs).abs()  # (N, d_ff)
    return hidden[:, groups].sum(dim=-1)  # (N, E)


def fit_router(inputs: Tensor, importance: Tensor, steps: int, lr: float, seed: int = 0) -> Tensor:
    """Router weights (E, d): softmax(x Wᵀ) fitted to the experts' shares of importance."""
    target = importance / importance.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # (N, E)
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(importance.shape[1], inputs.shape[1], generator=g) * 1e-3).to(inputs)
    weight.requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=lr)
    scale = inputs.pow(2).mean().rsqrt()  # inputs of unit scale: one lr suits every layer
    with torch.enable_grad():
        for _ in range(steps):
            logits = (inputs * scale) @ weight.t()  # (N, E)
            loss = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return (weight.detach() * scale).contiguous()


@torch.no_grad()
def ffn_inputs(model: CausalLM, batches: Sequence[Tensor]) -> list[Tensor]:
    """Every layer's FFN input (post-attention norm output) on the token batches: L × (N, d)."""
    captured: list[list[Tensor]] = [[] for _ in model.model.layers]
    hooks = [
        block.mlp.register_forward_pre_hook(
            lambda m, args, i=i: captured[i].append(args[0].reshape(-1, args[0].shape[-1]))
        )
        for i, block in enumerate(model.model.layers)
    ]
    try:
        for ids in batches:
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(parts) for parts in captured]


def split_layer(
    mlp: SwiGLU, inputs: Tensor, experts: int, clustering: str, router: tuple[int, float], seed: int
) -> dict[str, Tensor]:
    """One dense FFN as MoE tensors: router gate, stacked expert weights (neurons grouped)."""
    sample = inputs[torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))]
    features = F.normalize(FEATURES.get(clustering)(mlp, sample[:2048]), dim=1)
    labels = balanced_kmeans(features, experts, seed=seed)
    groups = torch.stack([(labels == e).nonzero().squeeze(1) for e in range(experts)])  # (E, f)
    steps, lr = router
    gate = fit_router(inputs, expert_importance(mlp, inputs, groups), steps, lr, seed)
    return {
        "mlp.gate.weight": gate,
        "mlp.experts.gate_proj": mlp.gate_proj.weight[groups],  # (E, f, d)
        "mlp.experts.up_proj": mlp.up_proj.weight[groups],
        "mlp.experts.down_proj": mlp.down_proj.weight[:, groups].permute(1, 0, 2),  # (E, d, f)
    }


@torch.no_grad()
def moefy(
    model: CausalLM,
    batches: Sequence[Tensor],
    experts: int,
    top_k: int,
    clustering: str = "coactivation",
    router_steps: int = 300,
    router_lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
) -> CausalLM:
    """A MoE copy of dense `model`: each FFN split into `experts`, routers trained on the
    dense model's FFN inputs over `batches` (token ids (B, T)), top_k experts per token."""
    c = model.config
    if c.ffn != "dense":
        raise ConfigError(f"MoEfication splits dense FFNs; this model has model.ffn={c.ffn!r}")
    if c.d_ff % experts:
        raise ConfigError(f"d_ff={c.d_ff} neurons do not split into {experts} equal experts")
    FEATURES.get(clustering)  # an unknown name fails before any work
    config = c.replace(
        ffn="moe",
        n_experts=experts,
        top_k=top_k,
        d_ff_expert=c.d_ff // experts,
        expert_weights="ones",
        norm_topk_prob=False,
        shared_expert_d_ff=0,
    )
    config.validate()
    was_training = model.training
    model.eval()
    inputs = ffn_inputs(model, batches)
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    router = (router_steps, router_lr)
    layers = tqdm(model.model.layers, desc="moefy", unit="layer", disable=not progress)
    for i, block in enumerate(layers):
        split = split_layer(block.mlp, inputs[i], experts, clustering, router, seed)
        state.update({f"model.layers.{i}.{k}": v for k, v in split.items()})
    model.train(was_training)
    device, dtype = (
        state["model.embed_tokens.weight"].device,
        state["model.embed_tokens.weight"].dtype,
    )
    with torch.device(device):
        moe = CausalLM(config).to(dtype)
    moe.load_state_dict(state)
    return moe.eval()


@torch.no_grad()
def expert_coverage(layer: MoE, inputs: Tensor) -> dict[str, float]:
    """How much of a MoEfied FFN's activation mass Σ|act(gate)·up| (over all its experts) the
    top_k experts hold, on FFN inputs (N, d): those its router picks, and the best top_k
    (an oracle). Their gap is the router's error; the oracle's shortfall from 1 is what no
    router can recover at this k."""
    e = layer.experts
    gate = torch.einsum("nd,efd->enf", inputs, e.gate_proj)
    mass = e.act(gate, torch.einsum("nd,efd->enf", inputs, e.up_proj)).abs().sum(-1).t()  # (N, E)
    total = mass.sum(-1).clamp(min=1e-12)
    picked = layer.route(inputs)[1]  # (N, k)
    best = mass.topk(layer.top_k, dim=-1).values.sum(-1)
    return {
        "router": float((mass.gather(1, picked).sum(-1) / total).mean()),
        "oracle": float((best / total).mean()),
    }


def set_top_k(model: nn.Module, top_k: int) -> None:
    """Run `top_k` experts per token in every MoE layer of `model` (and say so in its config)."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers or not 1 <= top_k <= layers[0].n_experts:
        raise ConfigError(f"top_k={top_k} needs MoE layers of at least {top_k} experts")
    for layer in layers:
        layer.top_k = top_k
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "top_k"):
        config.top_k = top_k
