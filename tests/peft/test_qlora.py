"""QLoRA = NF4 base (every linear but the head) + LoRA on all linear layers."""

import json

import pytest
import torch

from lmforge import peft
from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.peft.lora import LoraLinear
from lmforge.quant import NF4Linear, quantize_model

V = 61


def native() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=V, tie_embeddings=False)).eval()


def ids() -> torch.Tensor:
    return torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(3))


def test_every_linear_but_the_head_is_nf4_under_lora():
    base_total = peft.count_parameters(native())[1]
    delta = peft.apply(native(), "qlora", {"r": 4})
    model = delta.model
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    assert len(wrapped) == 2 * 7  # q k v o gate up down in each of 2 layers
    assert all(isinstance(m.base_layer, NF4Linear) for m in wrapped.values())
    assert type(model.lm_head) is not NF4Linear and not isinstance(model.lm_head, LoraLinear)
    assert delta.report.num_layers == 14
    assert delta.report.bits_per_parameter == pytest.approx(4.127, abs=0.01)
    trainable, total = peft.count_parameters(model)
    lora = sum(4 * (m.base_layer.in_features + m.base_layer.out_features) for m in wrapped.values())
    assert trainable == lora and total == base_total + lora


def test_at_init_it_computes_the_quantized_base():
    quantized = native()
    quantize_model(quantized, embedding_dtype="bfloat16")  # QLoRA's defaults
    with torch.no_grad():
        expected = quantized(ids()).logits
        got = peft.apply(native(), "qlora", {"r": 4}).model(ids()).logits
        floating = native()(ids()).logits
    assert torch.equal(got, expected)
    assert not torch.equal(got, floating) and torch.allclose(got, floating, atol=0.1)


def test_save_and_load_recreates_the_same_model(tmp_path):
    delta = peft.apply(native(), "qlora", {"r": 4, "double_quant": False, "quant_type": "fp4"})
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.add_(torch.randn_like(p) * 0.1)
        expected = delta.model(ids()).logits
    delta.save(tmp_path / "delta")
    loaded = peft.load_delta(tmp_path / "delta", native())
    assert set(loaded.state_dict()) == set(delta.state_dict())  # A and B only
    with torch.no_grad():
        assert torch.equal(loaded.model(ids()).logits, expected)


def test_a_delta_saved_without_embedding_dtype_loads_with_fp32_embeddings(tmp_path):
    from lmforge.peft.base import CONFIG_FILE

    delta = peft.apply(native(), "qlora", {"r": 4})
    delta.save(tmp_path / "delta")
    config_file = tmp_path / "delta" / CONFIG_FILE
    meta = json.loads(config_file.read_text())
    assert meta["config"]["embedding_dtype"] == "bfloat16"
    loaded = peft.load_delta(tmp_path / "delta", native())
    assert loaded.model.get_input_embeddings().weight.dtype == torch.bfloat16
    del meta["config"]["embedding_dtype"]  # as a delta saved before the field existed
    config_file.write_text(json.dumps(meta))
    old = peft.load_delta(tmp_path / "delta", native())
    assert old.config.embedding_dtype is None
    assert old.model.get_input_embeddings().weight.dtype == torch.float32


def test_bad_settings_and_merging_are_refused():
    with pytest.raises(ConfigError, match="quant_type 'nf3'"):
        peft.apply(native(), "qlora", {"quant_type": "nf3"})
    with pytest.raises(ConfigError, match="cannot be merged"):
        peft.apply(native(), "qlora", {"r": 4}).merge()


def test_quantizing_while_loading_equals_quantizing_after(tiny_model_dir):
    from lmforge.hub import load_model

    delta = peft.build("qlora", {"r": 4, "quant_type": "fp4"})
    loaded = load_model(tiny_model_dir, quantize=delta.quantization())
    assert sum(isinstance(m, NF4Linear) for m in loaded.modules()) == 14
    after = load_model(tiny_model_dir)
    quantize_model(after, **delta.quantization())
    with torch.no_grad():
        assert torch.equal(loaded(ids()).logits, after(ids()).logits)
    delta.apply(loaded)  # already quantized with its settings: kept as it is
    with pytest.raises(ConfigError, match="already quantized"):
        peft.apply(load_model(tiny_model_dir, quantize={"quant_type": "fp4"}), "qlora", {})
