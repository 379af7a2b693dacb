"""LoRA on native and transformers models, and interop with Hugging Face PEFT's files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.hf import from_hf
from lmforge.peft import build, count_parameters, load_delta
from lmforge.peft.interop.lora import load_peft_lora, save_peft_lora
from lmforge.peft.lora import Lora, LoraConfig, LoraLinear
from tests.models import BACKENDS, VOCAB, T, ids, logits, make  # noqa: F401


def randomize(method: Lora, seed: int = 2, std: float = 0.1) -> None:
    """Non-zero A and B, so that the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters().values():
            p.copy_(std * torch.randn(p.shape, generator=g))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ─────────────────────────────────────────────────────────────────────── the contract


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_lora_parameters_train_and_get_gradients(backend: str) -> None:
    model = make(backend)
    method = build("lora", {"r": 4, "alpha": 8})
    method.apply(model)
    names = sorted(method.trainable_parameters())
    assert names[:2] == [
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "model.layers.0.self_attn.q_proj.lora_B.weight",
    ]
    assert len(names) == 8 and all(".lora_A." in n or ".lora_B." in n for n in names)
    # q_proj: 64 → 64, v_proj: 64 → 32 (two KV heads of 16); r·(in + out) each, two layers.
    assert count_parameters(model)[0] == 2 * 4 * ((64 + 64) + (64 + 32))
    randomize(method)
    model(ids(), labels=ids()).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_unchanged_at_init(backend: str) -> None:
    model = make(backend)
    before = logits(model)
    build("lora", {"r": 4, "targets": "all-linear"}).apply(model)
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_equals_unmerged_and_unmerge_restores(backend: str) -> None:
    model = make(backend)
    original = {n: p.clone() for n, p in model.state_dict().items()}
    method = build("lora", {"r": 4, "targets": "all-linear", "rslora": True})
    method.apply(model)
    randomize(method)
    unmerged = logits(model)
    assert max_diff(unmerged, logits(make(backend))) > 0.1  # the adapter does something
    method.merge()
    assert method.merged and all(layer.merged for layer in method.layers().values())
    assert max_diff(logits(model), unmerged) <= 1e-5
    method.unmerge()
    assert max_diff(logits(model), unmerged) <= 1e-5
    for name, p in model.state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer.", ".")
            assert max_diff(p, original[key]) <= 1e-6, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_and_unload_gives_plain_linears(backend: str) -> None:
    model = make(backend)
    method = build("lora", {"r": 4, "targets": ["q_proj", "down_proj"]})
    method.apply(model)
    randomize(method)
    adapted = logits(model)
    plain = method.merge_and_unload()
    assert not any(isinstance(m, LoraLinear) for m in plain.modules())
    assert isinstance(plain.model.layers[1].mlp.down_proj, nn.Linear)
    assert count_parameters(plain)[1] == count_parameters(make(backend))[1]
    assert max_diff(logits(plain), adapted) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_then_load_delta_round_trips(backend: str, tmp_path) -> None:
    model = make(backend)
    method = build("lora", {"r": 4, "alpha": 4, "targets": ["k_proj", "up_proj"]})
    method.apply(model)
    randomize(method)
    method.save(tmp_path)
    loaded = load_delta(tmp_path, make(backend))
    assert isinstance(loaded, Lora) and loaded.config == method.config
    assert torch.equal(logits(loaded.model), logits(model))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_few_adamw_steps_lower_the_loss(backend: str) -> None:
    torch.manual_seed(0)
    model = make(backend).train()
    method = build("lora", {"r": 4, "dropout": 0.1})
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
def test_a_delta_for_another_shape_is_refused(backend: str, tmp_path) -> None:
    method = build("lora", {"r": 4})
    method.apply(make(backend))
    method.save(tmp_path)
    with pytest.raises(CheckpointError, match="another shape"):
        load_delta(tmp_path, make(backend, width=32))
    with pytest.raises(CheckpointError, match="another shape"):
        load_delta(tmp_path, make(backend, layers=1))
    # forced past the base check, the weights themselves still do not fit
    with pytest.raises(CheckpointError, match="has shape"):
        load_delta(tmp_path, make(backend, width=32), force=True)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_delta(tmp_path, make(backend, layers=1), force=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_that_match_nothing_list_module_names(backend: str) -> None:
    with pytest.raises(ConfigError, match="could match: down_proj, gate_proj, k_proj"):
        build("lora", {"targets": ["query"]}).apply(make(backend))


def test_config_is_checked_and_scaling_follows_rslora() -> None:
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"init": "xavier"}, {"targets": []}):
        with pytest.raises(ConfigError):
            build("lora", bad)
    assert LoraConfig(r=4, alpha=16).scaling == 4.0
    assert LoraConfig(r=4, alpha=16, rslora=True).scaling == 8.0
    layer = build("lora", {"r": 16, "alpha": 8, "rslora": True, "init": "gaussian"})
    model = layer.apply(make("native"))
    assert model.model.layers[0].self_attn.v_proj.scaling == 8 / math.sqrt(16)


def test_lora_twice_on_one_model_is_refused() -> None:
    model = make("native")
    build("lora").apply(model)
    with pytest.raises(ConfigError, match="already carries LoRA"):
        build("lora").apply(model)


class LinearLike(nn.Module):
    """A stand-in for a quantized base: linear-like, but no nn.Linear weight to merge into."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features, self.out_features = 6, 5
        self.register_buffer("packed", torch.randn(5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.packed.T


def test_lora_wraps_any_linear_like_base() -> None:
    torch.manual_seed(0)
    layer = LoraLinear(LinearLike(), r=2, scaling=2.0)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 6)
    expected = (
        x @ layer.base_layer.packed.T + 2.0 * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    )
    assert max_diff(layer(x), expected) <= 1e-5
    with pytest.raises(ConfigError, match="merging needs a plain nn.Linear"):
        layer.merge()


# ──────────────────────────────────────────────────────────── Hugging Face PEFT interop


def peft_model(base: nn.Module, rslora: bool, seed: int = 3) -> nn.Module:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        use_rslora=rslora,
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(base, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("source", ["hf", "native"])
def test_lmforge_lora_loads_in_peft(source: str, rslora: bool, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    model = make("hf") if source == "hf" else from_hf(make("hf")).eval()
    method = build("lora", {"r": 4, "alpha": 8, "rslora": rslora, "targets": "all-linear"})
    method.apply(model)
    randomize(method)
    save_peft_lora(method, tmp_path, base_model_name_or_path="tiny-llama")
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["use_rslora"] == rslora
    assert meta["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    reference = peft.PeftModel.from_pretrained(make("hf"), tmp_path).eval()
    assert max_diff(logits(reference), logits(model)) <= 1e-5


def test_a_subset_of_layers_is_saved_with_full_module_names(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    model = make("hf")
    method = build("lora", {"r": 2, "targets": r"re:.*layers\.1\.self_attn\.q_proj"})
    method.apply(model)
    randomize(method)
    save_peft_lora(method, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["target_modules"] == ["model.layers.1.self_attn.q_proj"]
    reference = peft.PeftModel.from_pretrained(make("hf"), tmp_path).eval()
    assert max_diff(logits(reference), logits(model)) <= 1e-5


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("target", ["hf", "native"])
def test_peft_adapter_loads_in_lmforge(target: str, rslora: bool, tmp_path) -> None:
    reference = peft_model(make("hf"), rslora)
    reference.save_pretrained(tmp_path)
    base = make("hf") if target == "hf" else from_hf(make("hf")).eval()
    method = load_peft_lora(tmp_path, base)
    assert method.config.rslora == rslora and method.config.targets == [
        "down_proj",
        "q_proj",
        "v_proj",
    ]
    expected = logits(reference)
    assert max_diff(expected, logits(make("hf"))) > 0.1  # the adapter does something
    assert max_diff(logits(method.model), expected) <= 1e-5


def test_peft_features_without_a_counterpart_are_refused(tmp_path) -> None:
    peft_model(make("hf"), rslora=False).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    meta = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**meta, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora=True"):
        load_peft_lora(tmp_path, make("hf"))
    config_path.write_text(json.dumps({**meta, "r": 8}))
    with pytest.raises(CheckpointError, match="another shape"):
        load_peft_lora(tmp_path, make("hf"))
    with pytest.raises(CheckpointError, match="not a peft adapter"):
        load_peft_lora(tmp_path / "missing", make("hf"))
