"""NF4 / FP4 / Int4 block quantization, double quantization, NF4Linear and quantized models."""

from __future__ import annotations

import concurrent.futures
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.host import float_placement
from lmforge.peft import build
from lmforge.peft.lora import LoraLinear
from lmforge.quant import (
    CODEBOOKS,
    NF4Linear,
    codebook,
    dequantize_4bit,
    double_dequantize,
    double_quantize,
    dynamic_map,
    linear4bit,
    load_quantized,
    normal_float_values,
    overhead_bits,
    quantization_error,
    quantize_4bit,
    quantize_model,
    save_quantized,
)
from lmforge.quant.apply import SIDECAR_FILE, WEIGHTS_FILE
from tests.models import ids, logits, make

NF4 = codebook("nf4").values()


def normal(*shape: int, seed: int = 0, std: float = 0.05) -> torch.Tensor:
    return std * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ─────────────────────────────────────────────────────────────────────── code books


def test_code_books() -> None:
    assert CODEBOOKS.names() == ["fp4", "int4", "nf4"]
    assert NF4.numel() == 16 and NF4[0] == -1 and NF4[7] == 0 and NF4[15] == 1
    assert bool((NF4[1:] > NF4[:-1]).all())
    # Re-deriving the table from normal quantiles gives the hard-coded values.
    assert torch.allclose(torch.tensor(normal_float_values()).float(), NF4, atol=1e-6, rtol=0)
    fp4 = codebook("fp4").values() * 12  # bit pattern s e e m, in code order
    assert fp4.tolist() == [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]
    assert torch.equal(codebook("int4").values() * 7, torch.arange(-7.0, 8.0))
    code = dynamic_map()
    assert code.numel() == 256 and code[-1] == 1 and bool((code[1:] > code[:-1]).all())
    with pytest.raises(ConfigError, match="quant_type 'nf5' is unknown; choose from fp4"):
        codebook("nf5")


def test_packing_order_and_nearest_code() -> None:
    w = 2.0 * NF4  # one block of 16: every value is a code value, absmax 2
    q = quantize_4bit(w, "nf4", blocksize=16)
    assert q.packed.tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]
    assert torch.equal(q.absmax, torch.tensor([2.0]))
    assert torch.equal(dequantize_4bit(q), w)
    # Just either side of the midpoint between codes 8 and 9.
    mid = float((NF4[8] + NF4[9]) / 2)
    q = quantize_4bit(torch.tensor([mid - 1e-4, mid + 1e-4, 1.0, 0.0]), "nf4", blocksize=4)
    assert q.packed.tolist() == [0x89, 0xF7]


def test_short_last_block_is_padded() -> None:
    w = normal(100)  # 64 + 36 values
    q = quantize_4bit(w, "nf4", blocksize=64)
    assert q.packed.shape == (50,) and q.absmax.shape == (2,)
    assert q.absmax[1] == w[64:].abs().max()
    padded = quantize_4bit(F.pad(w, (0, 28)), "nf4", blocksize=64)
    assert torch.equal(padded.absmax, q.absmax)
    assert torch.equal(padded.packed[:50], q.packed)
    assert torch.equal(dequantize_4bit(q), dequantize_4bit(padded)[:100])
    odd = quantize_4bit(normal(5, 7), "fp4", blocksize=8)  # 35 values: 18 bytes, 5 blocks
    assert odd.packed.shape == (18,) and dequantize_4bit(odd).shape == (5, 7)


def test_double_quantization_and_its_overhead() -> None:
    assert overhead_bits(64, double_quant=False) == 0.5
    assert overhead_bits(64, double_quant=True) == 8 / 64 + 32 / (64 * 256) == 0.126953125
    w = normal(1024, 64)  # 1024 blocks: four groups of 256 constants
    q = quantize_4bit(w, "nf4", 64, double_quant=True)
    dq = q.absmax
    assert dq.codes.dtype == torch.uint8 and dq.codes.shape == (1024,)
    assert dq.scale.shape == (4,) and dq.offset.shape == (1,)
    plain = quantize_4bit(w, "nf4", 64).absmax
    assert torch.equal(dq.offset, plain.mean().reshape(1))
    assert (double_dequantize(dq) - plain).abs().max() < 0.01 * plain.max()
    assert q.nbytes == 1024 * 64 // 2 + 1024 + 4 * 4 + 4
    assert double_quantize(torch.full((10,), 0.5)).codes.tolist() == [0] * 10  # all zero


def test_quantization_error_ranks_the_code_books() -> None:
    w = normal(256, 256, std=1.0)
    err = {t: quantization_error(w, t) for t in ("nf4", "fp4", "int4")}
    assert err["nf4"]["mse"] < err["int4"]["mse"] < err["fp4"]["mse"]
    assert err["nf4"]["mae"] < err["int4"]["mae"] < err["fp4"]["mae"]
    double = quantization_error(w, "nf4", double_quant=True)
    assert err["nf4"]["bits_per_parameter"] == 4.5
    assert double["bits_per_parameter"] == 4 + 0.126953125 + 32 / w.numel()
    assert double["mse"] < 1.01 * err["nf4"]["mse"]


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="blocksize must be a positive even"):
        quantize_4bit(normal(8), blocksize=63)
    with pytest.raises(ConfigError, match="non-empty float weight"):
        quantize_4bit(torch.ones(4, dtype=torch.int64))


# ─────────────────────────────────────────────────────────── bitsandbytes parity (CPU)


@pytest.mark.parametrize("shape", [(64, 64), (96, 200), (3, 5), (7,)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double", [True, False])
def test_bitsandbytes_parity(shape: tuple[int, ...], quant_type: str, double: bool) -> None:
    bnbf = pytest.importorskip("bitsandbytes.functional")
    w = normal(*shape, seed=sum(shape))
    packed, state = bnbf.quantize_4bit(
        w, blocksize=64, quant_type=quant_type, compress_statistics=double
    )
    q = quantize_4bit(w, quant_type, 64, double_quant=double)
    assert torch.equal(q.packed, packed.view(-1))
    if double:
        assert torch.equal(q.absmax.codes, state.absmax)
        assert torch.equal(q.absmax.scale, state.state2.absmax)
        assert torch.equal(q.absmax.offset, state.offset.reshape(1))
    else:
        assert torch.equal(q.absmax, state.absmax)
    assert torch.equal(dequantize_4bit(q), bnbf.dequantize_4bit(packed, state))


def test_bitsandbytes_code_books_and_linear4bit() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    for name in ("nf4", "fp4"):
        assert torch.equal(codebook(name).values(), bnb.functional.get_4bit_type(name, "cpu"))
    assert torch.equal(dynamic_map(), bnb.functional.create_dynamic_map())
    linear = nn.Linear(128, 48)
    ref = bnb.nn.Linear4bit(128, 48, compute_dtype=torch.float32, quant_type="nf4")
    ref.weight = bnb.nn.Params4bit(
        linear.weight.data.clone(), requires_grad=False, quant_type="nf4", blocksize=64
    )
    ref.bias = nn.Parameter(linear.bias.data.clone())
    ref = ref.to("cpu")  # quantizes
    x = normal(3, 128, seed=5)
    with torch.no_grad():
        assert torch.equal(NF4Linear.from_linear(linear)(x), ref(x))


# ──────────────────────────────────────────────────────────────────────── NF4Linear


def test_nf4_linear_forward_backward() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 24)
    layer = NF4Linear.from_linear(linear)
    w_hat = dequantize_4bit(quantize_4bit(linear.weight, "nf4", 64, double_quant=True))
    assert torch.equal(layer.dequantize(), w_hat)
    assert sorted(layer.state_dict()) == [
        "absmax_codes",
        "absmax_offset",
        "absmax_scale",
        "bias",
        "qweight",
    ]
    assert list(layer.parameters()) == [layer.bias] and not layer.bias.requires_grad
    x = normal(2, 5, 64, seed=1).requires_grad_()
    y = layer(x)
    assert torch.equal(y, F.linear(x, w_hat, linear.bias))
    y.square().sum().backward()
    assert torch.allclose(x.grad, (2 * y.detach()) @ w_hat, atol=1e-6, rtol=0)
    assert layer.bias.grad is None
    layer.bias.requires_grad_(True)  # BitFit-style: an unfrozen bias gets its gradient
    layer(x).sum().backward()
    assert torch.equal(layer.bias.grad, torch.full((24,), 10.0))


def test_layers_sharing_the_scratch_buffer_stay_exact() -> None:
    """Every layer rebuilds Ŵ in the same per-thread buffer: interleaved forwards and the
    backward passes (which rebuild Ŵ again, in reverse order) must still be exact."""
    torch.manual_seed(0)
    linears = [nn.Linear(64, 96, bias=False), nn.Linear(96, 64, bias=False)]
    layers = [NF4Linear.from_linear(lin) for lin in linears]
    weights = [layer.dequantize() for layer in layers]  # fresh tensors, never overwritten
    x = normal(3, 64, seed=2).requires_grad_()
    y = layers[1](layers[0](x))
    with torch.no_grad():  # the no-grad path uses the buffer too, and must not disturb y
        layers[0](normal(3, 64, seed=3))
    assert torch.equal(y, F.linear(F.linear(x, weights[0]), weights[1]))
    y.square().sum().backward()
    expected = ((2 * y.detach()) @ weights[1]) @ weights[0]
    assert torch.allclose(x.grad, expected, atol=1e-6, rtol=0)
    assert torch.equal(layers[0].dequantize(), weights[0])

    def inference_first() -> None:  # a new thread starts with no buffers
        with torch.inference_mode():  # inference tensors cannot be written outside the mode
            layers[0](x)
        layers[0](x).sum().backward()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(inference_first).result()


def test_backward_takes_the_held_weight_only_while_it_is_unchanged(monkeypatch) -> None:
    """A backward straight after its layer's forward (as under gradient checkpointing) skips
    rebuilding Ŵ; a same-size layer in between, or new codes, make it rebuild."""
    torch.manual_seed(0)
    linears = [nn.Linear(64, 96, bias=False), nn.Linear(96, 64, bias=False)]  # one size
    layers = [NF4Linear.from_linear(lin) for lin in linears]
    weights = [layer.dequantize() for layer in layers]
    calls = []
    expand = linear4bit.expand_4bit
    monkeypatch.setattr(linear4bit, "expand_4bit", lambda *a: calls.append(1) or expand(*a))

    def input_grad(layer: NF4Linear, between=lambda: None) -> tuple[torch.Tensor, int]:
        calls.clear()
        x = normal(3, layer.in_features, seed=4).requires_grad_()
        y = layer(x)
        between()
        y.sum().backward()
        return x.grad, len(calls)

    ones = torch.ones(3, 96)
    grad, count = input_grad(layers[0])
    assert count == 1 and torch.equal(grad, ones @ weights[0])  # reused: one expansion
    grad, count = input_grad(layers[0], lambda: layers[1](normal(3, 96, seed=5)))
    assert count == 3 and torch.equal(grad, ones @ weights[0])  # overwritten: rebuilt
    other = quantize_4bit(linears[1].weight.reshape(96, 64), "nf4", 64, double_quant=True)
    grad, count = input_grad(layers[0], lambda: layers[0].load_quantized(other))
    assert count == 2 and torch.equal(grad, ones @ layers[0].dequantize())  # new codes
    assert not torch.equal(grad, ones @ weights[0])


def test_nf4_linear_dtypes_and_placement() -> None:
    linear = nn.Linear(64, 8, bias=False).to(torch.bfloat16)
    layer = NF4Linear.from_linear(linear, quant_type="fp4", double_quant=False)
    assert float_placement(layer) == (torch.device("cpu"), torch.bfloat16)
    assert layer(normal(3, 64)).dtype == torch.float32  # computes in bf16, returns fp32
    layer.half()
    assert layer.compute_dtype == torch.float16 and layer.absmax.dtype == torch.float32
    assert layer.dequantize().dtype == torch.float16
    assert layer.storage_bytes() == 64 * 8 // 2 + 8 * 4


def test_lora_wraps_nf4_linear() -> None:
    model = make("native")
    quantize_model(model)
    method = build("lora", {"r": 4, "alpha": 8})
    method.apply(model)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoraLinear) and isinstance(q.base_layer, NF4Linear)
    model(ids(), labels=ids()).loss.backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and all(".lora_" in n for n in trained)


# ───────────────────────────────────────────────────────────────── whole models


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_quantize_model_report_and_logits(backend: str) -> None:
    model = make(backend)
    reference = copy.deepcopy(model)
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    report = quantize_model(model)
    assert report.num_layers == len(linears) == 14 and "lm_head" not in report.layers
    assert isinstance(model.lm_head, nn.Linear) and isinstance(
        model.model.embed_tokens, nn.Embedding
    )
    assert report.parameters == sum(m.weight.numel() for m in linears)
    assert report.bytes_before == 4 * report.parameters
    assert report.bits_per_parameter == pytest.approx(4 + 0.126953125, abs=0.02)
    assert report.bytes_saved == report.bytes_before - report.bytes_after > 0
    assert report.to_dict()["num_layers"] == 14
    for name in report.layers:  # the float model with dequantized weights computes the same
        reference.get_submodule(name).weight.data = model.get_submodule(name).dequantize()
    assert torch.allclose(logits(model), logits(reference), atol=1e-5, rtol=0)


def test_quantize_model_targets() -> None:
    model = make("native")
    report = quantize_model(model, targets=["q_proj"], double_quant=False)
    assert report.layers == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert report.bits_per_parameter == 4.5 and report.tied == []
    assert quantize_model(model, targets=["lm_head"]).tied == ["lm_head"]  # tied to embed_tokens
    with pytest.raises(ConfigError, match=r"\['mlp'\] match no linear module"):
        quantize_model(model, targets=["mlp"])
    with pytest.raises(ConfigError, match="entry 'qq_proj' names no linear module"):
        quantize_model(model, targets=["q_proj", "qq_proj"])
    with pytest.raises(ConfigError, match="'model.layers.0.self_attn.q_proj' is already"):
        quantize_model(model, targets=["q_proj"])
    with pytest.raises(ConfigError, match="quant_type 'nf3'"):
        quantize_model(model, quant_type="nf3")


@pytest.mark.parametrize(
    "backend, targets, aliases",
    [
        ("native", None, {"lm_head.weight": "model.embed_tokens.weight"}),  # tied head, stored once
        ("hf", ["q_proj", "down_proj", "lm_head"], {}),
    ],
)
def test_save_load_round_trip(backend: str, targets: list[str] | None, aliases, tmp_path) -> None:
    model = make(backend)
    report = quantize_model(model, targets=targets)
    expected = logits(model)
    save_quantized(model, tmp_path / "q")
    meta = json.loads((tmp_path / "q" / SIDECAR_FILE).read_text())
    assert sorted(meta["modules"]) == sorted(report.layers) and meta["aliases"] == aliases
    assert meta["modules"][report.layers[0]]["quant_type"] == "nf4"
    assert report.tied == []
    fresh = make(backend)
    with torch.no_grad():  # a skeleton whose weights all differ from the saved ones
        for p in fresh.parameters():
            p.add_(1.0)
    load_quantized(fresh, tmp_path / "q")
    assert all(isinstance(fresh.get_submodule(n), NF4Linear) for n in report.layers)
    assert torch.equal(logits(fresh), expected)


def test_load_errors_name_the_problem(tmp_path) -> None:
    model = make("native")
    quantize_model(model)
    with pytest.raises(ConfigError, match="no NF4Linear"):
        save_quantized(make("native"), tmp_path / "none")
    with pytest.raises(CheckpointError, match=f"{SIDECAR_FILE} is missing"):
        load_quantized(make("native"), tmp_path / "nowhere")
    save_quantized(model, tmp_path / "q")
    wider = make("native", width=128)
    with pytest.raises(CheckpointError) as error:
        load_quantized(wider, tmp_path / "q")
    assert (
        "module 'model.layers.0.mlp.down_proj' has shape (out, in) = (64, 192) in the "
        "checkpoint but (128, 352) in the model" in str(error.value)
    )
    assert isinstance(wider.model.layers[0].mlp.down_proj, nn.Linear)  # left untouched
    (tmp_path / "q" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} is missing"):
        load_quantized(make("native"), tmp_path / "q")
