"""Houlsby/parallel adapters, BitFit and named-parameter tuning on native and transformers
models: the delta contract, the adapters' equations, added and existing biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from lmforge.errors import CheckpointError, ConfigError
from lmforge.peft import build, count_parameters, load_delta
from lmforge.peft.adapter import Adapter, ParallelAdapter, SerialAdapter
from lmforge.peft.bitfit import AddedBias, BitFit, NamedParameters
from tests.models import BACKENDS, VOCAB, T, ids, logits, make  # noqa: F401

ADAPTERS = [("adapter", {"bottleneck": 8}), ("adapter", {"bottleneck": 8, "variant": "parallel"})]
# (method, config) cases that every contract test runs on both backends.
CASES = [
    *ADAPTERS,
    ("adapter", {"bottleneck": 4, "placement": ["ffn"], "activation": "silu", "scaling": 2.0}),
    ("bitfit", {}),
    ("bitfit", {"targets": ["v_proj", "down_proj"]}),
    ("named", {"patterns": ["norm", r"layers\.1\.mlp\.up_proj"]}),
]
IDS = ["serial", "parallel", "parallel-ffn-silu", "bitfit", "bitfit-v-down", "named"]


def randomize(method, seed: int = 2, std: float = 0.1) -> None:
    """Move every trained tensor away from its initial value (zero up-projections, biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters().values():
            p.add_(std * torch.randn(p.shape, generator=g))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ─────────────────────────────────────────────────────────────────────── the contract


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "config"), CASES, ids=IDS)
def test_only_the_method_trains_and_gets_gradients(name: str, config: dict, backend: str) -> None:
    model = make(backend)
    method = build(name, config)
    method.apply(model)
    trainable = method.trainable_parameters()
    assert trainable and count_parameters(model)[0] == sum(p.numel() for p in trainable.values())
    randomize(method)  # with zero up-projections the down-projections get no gradient
    model(ids(), labels=ids()).loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "config"), CASES, ids=IDS)
def test_output_unchanged_at_init(name: str, config: dict, backend: str) -> None:
    model = make(backend)
    before = logits(model)
    build(name, config).apply(model)
    assert max_diff(logits(model), before) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "config"), CASES, ids=IDS)
def test_save_then_load_delta_round_trips(name, config, backend, tmp_path) -> None:
    model = make(backend)
    method = build(name, config)
    method.apply(model)
    randomize(method)
    assert max_diff(logits(model), logits(make(backend))) > 1e-3  # the delta does something
    method.save(tmp_path)
    loaded = load_delta(tmp_path, make(backend))
    assert type(loaded) is type(method) and loaded.config == method.config
    assert torch.equal(logits(loaded.model), logits(model))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "config"), CASES, ids=IDS)
def test_a_few_adamw_steps_lower_the_loss(name: str, config: dict, backend: str) -> None:
    model = make(backend).train()
    method = build(name, config)
    method.apply(model)
    opt = torch.optim.AdamW(method.trainable_parameters().values(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(ids(4), labels=ids(4)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "config"), CASES, ids=IDS)
def test_a_delta_for_another_shape_is_refused(name, config, backend, tmp_path) -> None:
    method = build(name, config)
    method.apply(make(backend))
    method.save(tmp_path)
    with pytest.raises(CheckpointError, match="another shape"):
        load_delta(tmp_path, make(backend, width=32))
    with pytest.raises(CheckpointError, match="another shape"):
        load_delta(tmp_path, make(backend, layers=1))
    with pytest.raises(CheckpointError, match="has shape"):  # forced past the base check
        load_delta(tmp_path, make(backend, width=32), force=True)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_delta(tmp_path, make(backend, layers=1), force=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "config"), CASES[3:], ids=IDS[3:])
def test_specification_methods_merge_as_a_no_op(name: str, config: dict, backend: str) -> None:
    model = make(backend)
    method = build(name, config)
    method.apply(model)
    randomize(method)
    weights = {n: p.clone() for n, p in model.state_dict().items()}
    unmerged = logits(model)
    method.merge()
    assert method.merged and torch.equal(logits(model), unmerged)
    method.unmerge()
    assert all(torch.equal(p, weights[n]) for n, p in model.state_dict().items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapters_are_not_mergeable(backend: str) -> None:
    method = build("adapter", {"bottleneck": 8})
    method.apply(make(backend))
    assert not Adapter.mergeable
    with pytest.raises(ConfigError, match="cannot be merged"):
        method.merge()


# ───────────────────────────────────────────────────────────────────────── adapters


@pytest.mark.parametrize("backend", BACKENDS)
def test_serial_adapters_wrap_sublayer_outputs(backend: str) -> None:
    model = make(backend)
    method = build("adapter", {"bottleneck": 8, "scaling": 0.5})
    method.apply(model)
    assert method.wrapped == [
        "model.layers.0.self_attn.o_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]
    # Per adapter: down 64·8 + 8, up 8·64 + 64.
    assert count_parameters(model)[0] == 4 * (64 * 8 + 8 + 8 * 64 + 64)
    assert "model.layers.0.mlp.down_proj.adapter.up.weight" in method.trainable_parameters()
    randomize(method)
    wrapper = model.model.layers[0].mlp.down_proj
    assert isinstance(wrapper, SerialAdapter)
    x = torch.randn(2, 3, wrapper.base_layer.in_features)
    h = wrapper.base_layer(x)
    assert max_diff(wrapper(x), h + 0.5 * wrapper.adapter(h)) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_adapters_read_the_sublayer_input(backend: str) -> None:
    model = make(backend)
    method = build("adapter", {"bottleneck": 8, "variant": "parallel", "activation": "relu"})
    method.apply(model)
    assert method.wrapped[0] == "model.layers.0.self_attn" and len(method.wrapped) == 4
    randomize(method)
    mlp = model.model.layers[1].mlp
    assert isinstance(mlp, ParallelAdapter) and isinstance(mlp.adapter.act, nn.ReLU)
    x = torch.randn(2, 3, 64)
    assert max_diff(mlp(x), mlp.base_layer(x) + mlp.adapter(x)) <= 1e-6
    # Attention is wrapped whole: transformers passes hidden_states= and gets a tuple back.
    assert isinstance(model.model.layers[0].self_attn, ParallelAdapter)
    assert logits(model).shape == (2, T, VOCAB)


def test_adapter_config_and_placement_errors() -> None:
    bad = [{"bottleneck": 0}, {"placement": []}, {"placement": ["mlp"]}]
    bad += [{"placement": ["ffn", "ffn"]}, {"variant": "sequential"}, {"activation": "tanh"}]
    for config in bad:
        with pytest.raises(ConfigError):
            build("adapter", config)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4))
    model.get_input_embeddings = lambda: model[0]
    with pytest.raises(ConfigError, match=r"'\*\.self_attn\.o_proj'.*end in: 0, 1"):
        build("adapter").apply(model)
    twice = make("native")
    build("adapter").apply(twice)
    with pytest.raises(ConfigError, match="already carries adapters"):
        build("adapter").apply(twice)


# ─────────────────────────────────────────────────────────────────── BitFit and named


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitfit_adds_zero_biases_to_every_linear_layer(backend: str) -> None:
    model = make(backend)
    method = build("bitfit")
    method.apply(model)
    assert len(method.added) == 14 and "lm_head" not in method.added
    trainable = method.trainable_parameters()
    assert all(n.endswith(".bias") for n in trainable)
    assert "model.layers.1.self_attn.v_proj.bias" in trainable
    # Per layer: q 64 + k 32 + v 32 + o 64 + gate/up 2·d_ff + down 64.
    d_ff = model.model.layers[0].mlp.up_proj.out_features
    assert count_parameters(model)[0] == 2 * (64 + 32 + 32 + 64 + 2 * d_ff + 64)


def test_bitfit_trains_existing_biases_as_they_are() -> None:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.bias.fill_(0.5)
    before = logits(model)
    method = build("bitfit")
    method.apply(model)
    assert method.added == [
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    ]
    q_bias = method.trainable_parameters()["model.layers.0.self_attn.q_proj.bias"]
    assert bool((q_bias == 0.5).all()) and q_bias.requires_grad
    assert max_diff(logits(model), before) <= 1e-6


def test_bitfit_wraps_a_linear_like_base() -> None:
    class LinearLike(nn.Module):
        in_features, out_features = 6, 5

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("packed", torch.randn(5, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.packed.T

    model = nn.Sequential(LinearLike())
    method = BitFit()
    method.apply(model)
    assert isinstance(model[0], AddedBias) and list(method.trainable_parameters()) == ["0.bias"]
    with torch.no_grad():
        model[0].bias.fill_(1.0)
    x = torch.randn(2, 6)
    assert max_diff(model(x), x @ model[0].base_layer.packed.T + 1.0) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_bitfit_targets_that_match_nothing_list_module_names(backend: str) -> None:
    with pytest.raises(ConfigError, match="could match: down_proj, gate_proj, k_proj"):
        build("bitfit", {"targets": ["dense"]}).apply(make(backend))


def test_named_parameters_select_by_regex_and_see_tied_heads() -> None:
    model = make("native")  # the tiny preset ties lm_head to embed_tokens
    method = build("named", {"patterns": ["^lm_head"]})
    method.apply(model)
    assert list(method.trainable_parameters()) == ["model.embed_tokens.weight"]
    method = NamedParameters(NamedParameters.Config(patterns=[r"layers\.0\..*norm"]))
    method.apply(make("hf"))
    assert sorted(method.trainable_parameters()) == [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ]


def test_named_parameters_errors_list_names() -> None:
    with pytest.raises(ConfigError, match="patterns is empty"):
        build("named")
    with pytest.raises(ConfigError, match="not a regular expression"):
        build("named", {"patterns": ["(norm"]})
    with pytest.raises(ConfigError, match=r"named like: model\.embed_tokens\.weight, "):
        build("named", {"patterns": ["lora_"]}).apply(make("hf"))
