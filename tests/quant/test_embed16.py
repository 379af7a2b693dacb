"""Frozen embeddings (and a head tied to them) stored in 16 bits, computed in fp32."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lmforge import peft
from lmforge.errors import CheckpointError, ConfigError
from lmforge.quant import NF4Linear, embed16, load_quantized, quantize_model, save_quantized
from lmforge.quant.apply import SIDECAR_FILE
from lmforge.quant.embed16 import Embedding16, Linear16, store_embeddings
from tests.models import VOCAB, ids, logits, make


def rounded_twin(model: nn.Module, quantized: nn.Module) -> nn.Module:
    """`model` in fp32 with the weights `quantized` holds: dequantized, and bf16-rounded."""
    twin = copy.deepcopy(model)
    for name, module in quantized.named_modules():
        if isinstance(module, NF4Linear):
            twin.get_submodule(name).weight.data = module.dequantize()
    embed = twin.get_input_embeddings()
    embed.weight.data = embed.weight.data.to(torch.bfloat16).float()  # a tied head follows
    return twin


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_16_bit_embeddings_compute_like_their_rounded_float_twin(backend, monkeypatch) -> None:
    monkeypatch.setattr(embed16, "SLICE_NUMEL", 64 * 10)  # the head in slices of 10 words
    model = make(backend)
    original = copy.deepcopy(model)
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    report = quantize_model(model, embedding_dtype="bfloat16")
    twin = rounded_twin(original, model)
    names = ["model.embed_tokens", "lm_head"] if tied else ["model.embed_tokens"]
    assert report.embeddings == names and tied == (backend == "native")
    embed = model.get_input_embeddings()
    assert type(embed) is Embedding16 and embed.weight.dtype == torch.bfloat16
    assert not embed.weight.requires_grad and report.embedding_bytes_saved == VOCAB * 64 * 2
    assert isinstance(model.lm_head, Linear16) == tied
    if tied:
        assert model.lm_head.weight is embed.weight  # still one tensor
    assert torch.allclose(logits(model), logits(twin), atol=1e-5, rtol=0)
    lora, twin_lora = (
        torch.manual_seed(0) and peft.apply(m, "lora", {"r": 4}).model for m in (model, twin)
    )  # the same initial A on both
    model.train(), twin.train()
    losses = [m(ids(), labels=ids()).loss for m in (lora, twin_lora)]
    assert torch.allclose(losses[0], losses[1], atol=1e-5, rtol=0)
    for loss in losses:  # full logits through the head: Linear16's backward when tied
        loss.backward()
    trained = [n for n, p in lora.named_parameters() if p.grad is not None]
    assert trained and all(".lora_" in n for n in trained)
    twin_params = dict(twin_lora.named_parameters())
    for name in trained:
        assert torch.allclose(lora.get_parameter(name).grad, twin_params[name].grad, atol=1e-5)
    with pytest.raises(ConfigError, match="stored in 16 bits and frozen"):
        if tied:
            model.lm_head.weight.requires_grad_(True)
            model(ids())
        else:
            raise ConfigError("stored in 16 bits and frozen")  # an untied head is plain fp32


def test_casts_keep_the_16_bit_storage() -> None:
    model = make("native")
    store_embeddings(model, "float16")
    model.double()
    embed = model.get_input_embeddings()
    assert embed.weight.dtype == torch.float16 and embed.compute_dtype == torch.float64
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float64
    assert logits(model).dtype == torch.float64
    assert store_embeddings(model) == []  # already stored: nothing left to change
    tiny = torch.tensor([1e-7, 3.0e-5, -2.5e-6], dtype=torch.float16)  # fp16 subnormals
    embed.weight.data[0, :3] = tiny
    model.bfloat16()  # a cast to another 16-bit type must not round the stored values
    assert torch.equal(embed.weight.data[0, :3], tiny) and embed.compute_dtype == torch.bfloat16


def test_save_and_load_keep_the_16_bit_embeddings(tmp_path) -> None:
    model = make("native")
    quantize_model(model, embedding_dtype="bfloat16")
    expected = logits(model)
    save_quantized(model, tmp_path / "q")
    assert json.loads((tmp_path / "q" / SIDECAR_FILE).read_text())["embedding_dtype"] == "bfloat16"
    fresh = make("native")
    load_quantized(fresh, tmp_path / "q")
    assert fresh.get_input_embeddings().weight.dtype == torch.bfloat16
    assert torch.equal(logits(fresh), expected)
    sidecar = tmp_path / "q" / SIDECAR_FILE
    sidecar.write_text(sidecar.read_text().replace('"bfloat16"', '"bfloat17"'))
    untouched = make("native")
    with pytest.raises(CheckpointError, match=r"quantization.json: embedding_dtype 'bfloat17'"):
        load_quantized(untouched, tmp_path / "q")
    assert type(untouched.get_input_embeddings()) is nn.Embedding  # the model as it was


def test_bad_storage_dtype_is_named() -> None:
    with pytest.raises(ConfigError, match="embedding_dtype 'int8' is unknown"):
        quantize_model(make("native"), embedding_dtype="int8")
    with pytest.raises(ConfigError, match="qlora.embedding_dtype 'fp8'"):
        peft.apply(make("native"), "qlora", {"embedding_dtype": "fp8"})


def test_the_head_keeps_only_its_stored_weight_for_backward() -> None:
    model = make("native")
    store_embeddings(model)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model.lm_head(torch.randn(2, 3, 64, requires_grad=True)).sum().backward()
    assert len(saved) == 1 and saved[0] is model.lm_head.weight  # no widened fp32 copy


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_generation_computes_in_the_model_dtype(backend) -> None:
    from lmforge.model.generate import SamplingConfig, generate
    from lmforge.model.host import float_placement

    model = make(backend)
    original = copy.deepcopy(model)
    quantize_model(model, embedding_dtype="bfloat16")
    twin = rounded_twin(original, model)
    assert float_placement(model) == (torch.device("cpu"), torch.float32)  # not the storage
    prompts, config = [[1, 2, 3, 4], [5, 6]], SamplingConfig(max_new_tokens=6, temperature=0)
    tokens = [[r.token_ids for r in generate(m, prompts, config)] for m in (model, twin)]
    assert tokens[0] == tokens[1]
