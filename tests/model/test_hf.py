"""transformers checkpoints ⇄ native CausalLM: logit parity, export, errors, the model cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lmforge import hub
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.hf import config_from_hf, from_hf, load_hf_dir, save_hf_dir, to_hf_config
from lmforge.tokenizer import Tokenizer as LmTokenizer

VOCAB = 101
TOL = 1e-4
TINY_FIELDS = dict(  # a two-layer model with grouped-query attention
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of order one (norm gains near 1, biases too), so that logits spread and a
    swapped or dropped tensor shows; default inits leave norms at 1 and biases at 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.2 * noise)
    return model.eval()


def tiny_hf(family: str, tied: bool = False, **overrides: object) -> torch.nn.Module:
    config_cls, model_cls = FAMILIES[family]
    fields = dict(
        **TINY_FIELDS,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return randomize(model_cls(config_cls(**{**fields, **overrides})))


def batch(T: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (3, T), a left-padding mask, and the position ids the native model derives."""
    ids = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, T, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, :1] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as lmforge.model.gpt._position_ids
    return ids, mask, positions


def max_delta(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    diff = (a - b).abs()
    return (diff[keep.bool()] if keep is not None else diff).max().item()


def assert_parity(native: torch.nn.Module, hf: torch.nn.Module, T: int = 12) -> None:
    ids, mask, positions = batch(T)
    with torch.no_grad():
        assert max_delta(native(ids).logits, hf(ids).logits) <= TOL
        padded = native(ids, attention_mask=mask).logits
        reference = hf(ids, attention_mask=mask, position_ids=positions).logits
    assert max_delta(padded, reference, keep=mask) <= TOL


# ---------------------------------------------------------------------------- import parity


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_checkpoint_loads_with_logit_parity(family, tied, tmp_path):
    hf = tiny_hf(family, tied)
    hf.save_pretrained(tmp_path)
    native = load_hf_dir(tmp_path)
    assert isinstance(native, CausalLM) and not native.training
    assert (native.lm_head.weight is native.model.embed_tokens.weight) == tied
    assert native.config.attention_bias == (family == "qwen2")
    assert_parity(native, hf)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_from_hf_copies_the_live_model(family):
    hf = tiny_hf(family, tied=True)
    native = from_hf(hf)
    assert_parity(native, hf)
    with torch.no_grad():
        native.model.norm.weight.zero_()  # the copy owns its weights
    assert hf.model.norm.weight.abs().min() > 0


def test_config_from_hf_fields():
    config = config_from_hf(tiny_hf("qwen2", tied=True, head_dim=32).config)
    assert (config.vocab_size, config.d_model, config.n_layer, config.d_ff) == (VOCAB, 64, 2, 128)
    assert (config.n_head, config.n_kv_head, config.head_dim) == (4, 2, 32)
    assert (config.rope_theta, config.norm_eps, config.max_seq_len) == (500.0, 1e-5, 64)
    assert config.tie_embeddings and config.attention_bias


def test_sharded_checkpoint(tmp_path):
    hf = tiny_hf("llama")
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    assert_parity(load_hf_dir(tmp_path), hf)


def test_sliding_window_caps_the_context():
    hf = tiny_hf("mistral", sliding_window=8)
    native = from_hf(hf)
    assert native.config.max_seq_len == 8
    assert_parity(native, hf, T=8)  # up to the window, the window masks nothing
    with pytest.raises(ValueError, match="max_seq_len=8"):
        native(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="sliding window of 8 tokens"):
        config_from_hf(hf.config, max_seq_len=16)
    assert config_from_hf(tiny_hf("mistral").config).max_seq_len == 64  # window 4096 inactive
    qwen = Qwen2Config(use_sliding_window=True, sliding_window=32, max_window_layers=1)
    assert config_from_hf(qwen).max_seq_len == 32


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (GPT2Config(), r"gpt2.*supported: LlamaForCausalLM, .*MixtralForCausalLM, .*Qwen2MoeFor"),
        (LlamaConfig(architectures=["LlamaForSequenceClassification"]), "LlamaForSequence"),
        (
            LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
            "RoPE type 'linear'",
        ),
        (LlamaConfig(attention_bias=True), "o_proj"),
        (LlamaConfig(mlp_bias=True), "mlp_bias"),
        (MistralConfig(hidden_act="gelu"), "hidden_act='gelu'"),
        (
            LlamaConfig(quantization_config={"quant_method": "bitsandbytes"}),
            "quant_method 'bitsandbytes'",
        ),
    ],
    ids=["gpt2", "classifier", "rope-scaling", "llama-o-bias", "mlp-bias", "gelu", "quantized"],
)
def test_unsupported_configs_are_refused(config, match):
    with pytest.raises(ConfigError, match=match):
        config_from_hf(config)


def test_from_hf_refuses_other_architectures():
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    )
    with pytest.raises(ConfigError, match="GPT2LMHeadModel cannot be imported"):
        from_hf(gpt2)


# ---------------------------------------------------------------------------- broken checkpoints


def _rewrite(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, {"format": "pt"})


def _drop(name):
    return lambda d: d.pop(name)


BREAKAGES = {
    "no-config": (lambda d: (d / "config.json").unlink(), r"config\.json is missing"),
    "bad-json": (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "pickle-only": (
        lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
        "pytorch_model.bin.*never loads",
    ),
    "truncated": (
        lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:5000]
        ),
        r"model\.safetensors is not a readable safetensors file",
    ),
    "garbage": (
        lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 64),
        r"model\.safetensors is not a readable",
    ),
    "missing-tensor": (
        lambda d: _rewrite(d / "model.safetensors", _drop("model.layers.1.mlp.up_proj.weight")),
        r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing",
    ),
    "wrong-shape": (
        lambda d: _rewrite(
            d / "model.safetensors",
            lambda t: t.update({"model.norm.weight": torch.ones(32)}),
        ),
        r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(32,\).*\(64,\)",
    ),
    "unexpected-tensor": (
        lambda d: _rewrite(
            d / "model.safetensors", lambda t: t.update({"score.weight": torch.zeros(3)})
        ),
        "unexpected tensor 'score.weight'",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_checkpoints_raise_checkpoint_error(breakage, tmp_path):
    tiny_hf("llama").save_pretrained(tmp_path)
    breaks, match = BREAKAGES[breakage]
    breaks(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_hf_dir(tmp_path)


def test_missing_shard_and_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_hf_dir(tmp_path / "nowhere")
    tiny_hf("llama").save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=f"{shard} is missing"):
        load_hf_dir(tmp_path)


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "qkv-bias"])
def test_export_round_trip(tied, bias, tmp_path):
    config = preset("tiny", vocab_size=VOCAB, tie_embeddings=tied, attention_bias=bias)
    torch.manual_seed(0)
    native = randomize(CausalLM(config))
    save_hf_dir(native, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(hf).__name__ == ("Qwen2ForCausalLM" if bias else "LlamaForCausalLM")
    assert_parity(native, hf)
    back = load_hf_dir(tmp_path)
    ids, mask, _ = batch()
    with torch.no_grad():
        assert torch.equal(
            back(ids, attention_mask=mask).logits, native(ids, attention_mask=mask).logits
        )
    assert config_from_hf(to_hf_config(config)) == config


def test_export_writes_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    tokenizer.save_pretrained(tmp_path / "tok")
    native = CausalLM(preset("tiny", vocab_size=VOCAB))
    save_hf_dir(native, tmp_path / "out", tokenizer=tmp_path / "tok")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert reloaded("hello world").input_ids == [3, 4]
    assert reloaded.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False) == (
        "hello</s>"
    )


def test_export_refuses_extra_tensors(tmp_path):
    native = CausalLM(preset("tiny", vocab_size=VOCAB))
    native.model.layers[0].self_attn.register_parameter(
        "lora_A", torch.nn.Parameter(torch.zeros(2))
    )
    with pytest.raises(CheckpointError, match="lora_A.*merge or remove adapters"):
        save_hf_dir(native, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_export_takes_the_place_of_an_earlier_export_whole(tmp_path):
    out = tmp_path / "out"
    save_hf_dir(CausalLM(preset("tiny", vocab_size=VOCAB)), out)
    before = (out / "model.safetensors").read_bytes()
    tokenizer = LmTokenizer.train(["hello world"] * 20, vocab_size=270)

    class Broken(LmTokenizer):
        def save(self, path):
            raise OSError("disk full")

    broken = Broken(tokenizer.hf)
    with pytest.raises(OSError, match="disk full"):
        save_hf_dir(CausalLM(preset("tiny", vocab_size=VOCAB)), out, tokenizer=broken)
    assert (out / "model.safetensors").read_bytes() == before  # the earlier export stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    save_hf_dir(CausalLM(preset("tiny", vocab_size=VOCAB)), out, tokenizer=tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.eos_id and (out / "tokenizer.json").is_file()


def test_export_refuses_a_directory_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an exported model; export to another"):
        save_hf_dir(CausalLM(preset("tiny", vocab_size=VOCAB)), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------- hub


@pytest.mark.assets
def test_smollm2_native_matches_transformers():
    cache = hub.ensure_converted("smollm2-135m-instruct")  # ~30 s the first time, then cached
    start = time.perf_counter()
    native = hub.load_model("smollm2-135m-instruct")
    seconds = time.perf_counter() - start
    hf = hub.load_model("smollm2-135m-instruct", backend="hf")
    tokenizer = AutoTokenizer.from_pretrained(cache)
    assert "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False
    )
    ids = tokenizer("The capital of France is Paris, and the capital of", return_tensors="pt")
    with torch.no_grad():
        delta = max_delta(native(ids.input_ids).logits, hf(ids.input_ids).logits)
    print(
        f"\nSmolLM2-135M: max |Δlogit| native vs transformers = {delta:.2e}; "
        f"cached native load {seconds:.2f} s"
    )
    assert native.config.n_layer == 30 and native.config.tie_embeddings
    assert delta <= TOL


def test_relu_gated_checkpoints_round_trip(tmp_path):
    hf = tiny_hf("llama", hidden_act="relu")
    hf.save_pretrained(tmp_path / "hf")
    native = load_hf_dir(tmp_path / "hf")
    assert native.config.activation == "relu"
    assert_parity(native, hf)
    save_hf_dir(native, tmp_path / "back")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    assert again.config.hidden_act == "relu"
    assert_parity(native, again)
