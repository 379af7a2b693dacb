"""Mixtral and Qwen2-MoE checkpoints ⇄ the native MoE model: logit parity both ways, the
choice of export format, and configs read plainly as transformers reads them."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.hf import config_from_hf, from_hf, load_hf_dir, save_hf_dir
from lmforge.model.hf_config import load_hf_config, plain_config
from tests.model.test_hf import TINY_FIELDS, VOCAB, assert_parity, batch, randomize

MOE_FIELDS = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=80,
        norm_topk_prob=False,
    ),
}
CLASSES = {
    "mixtral": (MixtralConfig, MixtralForCausalLM),
    "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM),
}


def tiny_moe(family: str, tied: bool = False, **overrides: object) -> torch.nn.Module:
    config_cls, model_cls = CLASSES[family]
    fields = dict(
        **TINY_FIELDS,
        **MOE_FIELDS[family],
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return randomize(model_cls(config_cls(**{**fields, **overrides})))


CASES = {
    "mixtral": ("mixtral", {}),
    "mixtral-tied": ("mixtral", {"tied": True}),
    "qwen2_moe": ("qwen2_moe", {}),
    "qwen2_moe-normalised-no-bias": ("qwen2_moe", {"norm_topk_prob": True, "qkv_bias": False}),
}


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_imports_and_exports_with_logit_parity(case, tmp_path):
    family, overrides = CASES[case]
    hf = tiny_moe(family, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    native = load_hf_dir(tmp_path / "hf")
    assert native.config.ffn == "moe" and native.config.n_experts == 4
    assert native.config.top_k == 2
    assert_parity(native, hf)
    save_hf_dir(native, tmp_path / "back")
    stored = json.loads((tmp_path / "back" / "config.json").read_text())
    assert stored["model_type"] == family
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(again) is type(hf)
    assert_parity(native, again)
    reloaded = load_hf_dir(tmp_path / "back")
    ids, mask, _ = batch()
    with torch.no_grad():
        assert torch.equal(
            reloaded(ids, attention_mask=mask).logits, native(ids, attention_mask=mask).logits
        )


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_from_hf_copies_a_live_moe_model(family):
    hf = tiny_moe(family)
    native = from_hf(hf)
    assert_parity(native, hf)
    with torch.no_grad():
        native.model.layers[0].mlp.experts.gate_proj.zero_()
    assert hf.model.layers[0].mlp.experts.gate_up_proj.abs().sum() > 0  # copies, not views


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_generation_matches_transformers_greedy(family, tmp_path):
    hf = tiny_moe(family)
    hf.save_pretrained(tmp_path)
    native = load_hf_dir(tmp_path)
    prompt = [3, 14, 15, 92, 65]
    ours = generate(native, [prompt], SamplingConfig(max_new_tokens=6, temperature=0.0))
    theirs = hf.generate(
        torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    assert ours[0].token_ids == theirs[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_moe_configs_read_plainly_as_transformers_reads_them(family, tmp_path):
    tiny_moe(family).config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert plain_config(raw) is not None
    mine = config_from_hf(load_hf_config(tmp_path))
    assert mine == config_from_hf(AutoConfig.from_pretrained(tmp_path))
    del raw["num_experts_per_tok"]  # its default lives in transformers
    assert plain_config(raw) is None


def test_qwen2_moe_with_dense_layers_between_is_refused():
    config = tiny_moe("qwen2_moe").config
    config.decoder_sparse_step = 2
    with pytest.raises(ConfigError, match="decoder_sparse_step"):
        config_from_hf(config)


@pytest.mark.parametrize(
    "fields,family",
    [
        (dict(norm_topk_prob=True), "mixtral"),
        (dict(shared_expert_d_ff=80, attention_bias=True), "qwen2_moe"),
        (dict(norm_topk_prob=False), "lmforge"),  # no transformers class weights top-2 so
        (dict(expert_weights="ones"), "lmforge"),
    ],
)
def test_native_moe_exports_to_the_family_that_computes_it(fields, family, tmp_path):
    config = preset("tiny", vocab_size=VOCAB, ffn="moe", n_experts=4, top_k=2, **fields)
    torch.manual_seed(0)
    native = randomize(CausalLM(config))
    save_hf_dir(native, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    back = load_hf_dir(tmp_path)
    assert back.config == native.config
    ids, mask, _ = batch()
    with torch.no_grad():
        assert torch.equal(
            back(ids, attention_mask=mask).logits, native(ids, attention_mask=mask).logits
        )
    if family != "lmforge":
        assert_parity(native, AutoModelForCausalLM.from_pretrained(tmp_path).eval())
