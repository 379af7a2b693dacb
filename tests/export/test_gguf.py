"""GGUF export: the layout llama.cpp reads (names, RoPE pairs, tokenizer, chat template), and
llama.cpp's greedy tokens equal lmforge's (llama-cpp-python, a test-only dependency)."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from lmforge.chat import chat_format
from lmforge.errors import ConfigError
from lmforge.export import export, open_source
from lmforge.export.gguf import arrange, gguf_name, interleave_halves, tokenizer_fields
from lmforge.model import CausalLM, preset
from lmforge.model.attention import RotaryEmbedding, apply_rope
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.hf import save_hf_dir
from lmforge.tokenizer import Tokenizer
from tests.conftest import TEXT

gguf = pytest.importorskip("gguf")
CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n" * 20


def rotate_pairs(x: torch.Tensor, position: int, theta: float) -> torch.Tensor:
    """llama.cpp's `llama` RoPE: (x₂ᵢ, x₂ᵢ₊₁) rotated by position·θ^(-2i/d); x (h, d)."""
    d = x.shape[-1]
    angle = position * theta ** (-torch.arange(0, d, 2).double() / d)
    a, b = x[:, 0::2], x[:, 1::2]
    out = torch.empty_like(x)
    out[:, 0::2] = a * angle.cos() - b * angle.sin()
    out[:, 1::2] = a * angle.sin() + b * angle.cos()
    return out


def test_interleaved_rows_make_pair_rotation_equal_half_rotation():
    heads, hd, d, theta, position = 3, 8, 16, 500.0, 7
    weight = torch.randn(heads * hd, d, dtype=torch.float64)
    x = torch.randn(d, dtype=torch.float64)
    cos, sin = RotaryEmbedding(hd, theta)(torch.tensor([[position]]), torch.float64)
    halves = apply_rope((weight @ x).view(1, heads, 1, hd), cos, sin).view(heads, hd)
    pairs = rotate_pairs((interleave_halves(weight, heads) @ x).view(heads, hd), position, theta)
    assert torch.allclose(pairs, interleave_halves(halves.reshape(-1, 1), heads).view(heads, hd))


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    """A quickstart-sized native model (the `small` preset) with a byte-level BPE tokenizer;
    weights drawn wide (std 0.2) so its next-token choices are clear, not near-ties."""
    root = tmp_path_factory.mktemp("small")
    tokenizer = Tokenizer.train([TEXT, CHINESE], vocab_size=400)
    torch.manual_seed(0)
    model = CausalLM(preset("small", vocab_size=tokenizer.vocab_size + 4, init_std=0.2)).eval()
    save_hf_dir(model, root / "model", tokenizer)
    return root / "model"


def test_gguf_holds_the_weights_tokenizer_and_chat_template(small_model_dir, tmp_path):
    source = open_source(str(small_model_dir))
    export(source, "gguf", tmp_path / "out", quant="f16")
    reader = gguf.GGUFReader(str(tmp_path / "out" / "model.gguf"))
    field = {
        k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")
    }
    c = source.model.config
    assert field["general.architecture"] == "llama"
    assert field["llama.block_count"] == c.n_layer and field["llama.attention.head_count_kv"] == 2
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == c.vocab_size and tokens[-1] == f"[PAD{c.vocab_size - 1}]"
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied head: llama.cpp reuses token_embd
    k = torch.from_numpy(np.array(tensors["blk.1.attn_k.weight"].data, dtype=np.float32))
    expected = interleave_halves(source.model.model.layers[1].self_attn.k_proj.weight, 2)
    assert torch.equal(k, expected.detach().half().float())
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize(
    "variant", [dict(mixer="retention"), dict(ffn="moe"), dict(activation="relu")]
)
def test_architectures_llama_cpp_does_not_compute_are_refused(variant):
    model = CausalLM(preset("tiny", vocab_size=61, **variant))
    with pytest.raises(ConfigError, match=f"{list(variant.values())[0]!r}.*format=hf"):
        arrange(model)


def test_tokenizer_fields_keep_every_id_and_merge():
    tokenizer = Tokenizer.train([TEXT, CHINESE], vocab_size=400)
    fields = tokenizer_fields(tokenizer, tokenizer.vocab_size)
    for text in ("To be, or not", "明月光"):
        ids = tokenizer.encode(text)
        assert [tokenizer.token_to_id(fields["tokens"][i]) for i in ids] == ids
    assert fields["pre"] == "gpt-2" and len(fields["merges"]) > 0
    assert fields["types"][tokenizer.eos_id] == 3  # control


def llama_cpp_greedy(path, prompt: list[int], n: int) -> list[int]:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False, seed=0)
    out = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def lmforge_greedy(model, prompt: list[int], n: int) -> list[int]:
    config = SamplingConfig(max_new_tokens=n, temperature=0.0)
    return generate(model, [prompt], config, eos_token_id=None)[0].token_ids


needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)


@needs_llama_cpp
def test_llama_cpp_decodes_the_f16_export_as_lmforge_does(small_model_dir, tmp_path):
    source = open_source(str(small_model_dir))
    export(source, "gguf", tmp_path / "out", quant="f16")
    messages = [{"role": "user", "content": "To be, or not to be? 明月"}]
    prompt = source.tokenizer.encode(chat_format(messages, source.tokenizer))
    rounded = source.model.half().float()  # the weights llama.cpp reads
    n = 24
    assert llama_cpp_greedy(tmp_path / "out" / "model.gguf", prompt, n) == lmforge_greedy(
        rounded, prompt, n
    )


def gguf_weights(path, model):
    """`model` (a copy) with the weights the GGUF holds: dequantized, q/k rows put back."""
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    c = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight" and c.tie_embeddings:
                continue
            t = stored[gguf_name(name)]
            w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()
            w = w.reshape(p.shape)
            heads = c.n_head if ".q_proj." in name else c.n_kv_head if ".k_proj." in name else 0
            if heads:  # undo interleave_halves: pairs back to halves
                w = w.reshape(heads, -1, 2, *w.shape[1:]).transpose(1, 2).reshape(p.shape)
            p.copy_(w)
    return model


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_llama_cpp_decodes_the_quantized_exports_as_their_weights_say(
    small_model_dir, tmp_path, quant
):
    source = open_source(str(small_model_dir))
    export(source, "gguf", tmp_path / quant, quant=quant)
    path = tmp_path / quant / "model.gguf"
    prompt = source.tokenizer.encode("To be, or not to be")
    stored = gguf_weights(path, copy.deepcopy(source.model))
    assert not torch.equal(
        stored.model.layers[0].mlp.up_proj.weight, source.model.model.layers[0].mlp.up_proj.weight
    )  # really rounded
    # llama.cpp also rounds activations to 8 bits in these products: the first tokens agree,
    # later ones may part where a random model's two best logits are closer than that rounding
    assert llama_cpp_greedy(path, prompt, 3) == lmforge_greedy(stored, prompt, 3)


@needs_llama_cpp
@pytest.mark.assets
@pytest.mark.slow
def test_llama_cpp_decodes_smollm2_as_lmforge_does(tmp_path):
    source = open_source("smollm2-135m-instruct")
    export(source, "gguf", tmp_path / "out", quant="f16")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = source.tokenizer.encode(chat_format(messages, source.tokenizer))
    n = 16
    theirs = llama_cpp_greedy(tmp_path / "out" / "model.gguf", prompt, n)
    assert theirs == lmforge_greedy(source.model.half().float(), prompt, n)
