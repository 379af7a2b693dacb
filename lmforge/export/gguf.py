"""A native decoder as one GGUF file that llama.cpp (and so Ollama) runs.

    CausalLM ──► tensors renamed to llama.cpp's names ──┐
                 (q/k rows permuted for its RoPE)        ├──► GGUFWriter ──► model.gguf
    Tokenizer ─► tokens, types, merges, specials ───────┤
    chat template, context, heads, widths ──────────────┘

llama.cpp's `llama` architecture rotates adjacent pairs (x₀, x₁), (x₂, x₃), ... of each head,
while the native model (like transformers' Llama) rotates the two halves (xᵢ, x_{i+d/2}). The
same rotation comes out if each head's rows of W_q and W_k are reordered so that the halves
interleave: row i of the first half goes to 2i, row i of the second half to 2i + 1. A model
with q/k/v biases (the Qwen2 layout) is written as llama.cpp's `qwen2`, which rotates halves
like lmforge, so nothing is permuted there.

Weights: `f16` stores every matrix in half precision; `q8_0` and `q4_0` store blocks of 32
weights as 8- or 4-bit integers with one f16 scale per block (llama.cpp's formats, through the
gguf package's reference quantizer). Vectors (norms, biases) stay f32, as llama.cpp expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import CausalLM
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer

GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class Quant:
    """How matrices are stored: the gguf package's tensor type and llama.cpp's file type."""

    tensor_type: str  # name in gguf.GGMLQuantizationType
    file_type: int  # llama.cpp's LLAMA_FTYPE (general.file_type)
    block: int  # a row's length must be a multiple of this (1: any)


QUANTS: Registry[Quant] = Registry("GGUF quantization")
QUANTS.add("f16", Quant("F16", 1, 1))
QUANTS.add("q8_0", Quant("Q8_0", 7, 32))
QUANTS.add("q4_0", Quant("Q4_0", 2, 32))

# native name (after `model.layers.N.`) → llama.cpp name (after `blk.N.`)
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}


def gguf_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`."""
    module, _, kind = name.rpartition(".")
    if module in TOP_NAMES:
        return f"{TOP_NAMES[module]}.{kind}"
    parts = module.split(".", 3)
    if parts[:2] == ["model", "layers"] and len(parts) == 4 and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}.{kind}"
    raise ConfigError(
        f"cannot write tensor {name!r} to GGUF: it is not a weight of the plain decoder "
        "(the gguf export merges a mergeable delta first)"
    )


def interleave_halves(weight: Tensor, heads: int) -> Tensor:
    """Rows of each head reordered from [first half, second half] to pairs (see the module
    docstring): (heads·hd, ...) → same shape, row (h, j, i) ← (h, i, j) for j < 2, i < hd/2."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def arrange(model: CausalLM) -> tuple[str, dict[str, Tensor]]:
    """llama.cpp's architecture name and the model's tensors under llama.cpp's names."""
    c = model.config
    rotate_pairs = not c.attention_bias  # `llama` rotates pairs; `qwen2` rotates halves
    tensors: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_embeddings:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        t = tensor.detach().float().cpu()
        if rotate_pairs and ".self_attn.q_proj." in name:
            t = interleave_halves(t, c.n_head)
        elif rotate_pairs and ".self_attn.k_proj." in name:
            t = interleave_halves(t, c.n_kv_head)
        tensors[gguf_name(name)] = t
    return ("llama" if rotate_pairs else "qwen2"), tensors


def _stored(tensor: Tensor, quant: Quant) -> tuple[np.ndarray, object]:
    """(data, raw type) for GGUFWriter.add_tensor; vectors and rows that do not split into
    whole blocks stay f32 / f16."""
    import gguf

    data = tensor.numpy()
    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = gguf.GGMLQuantizationType[quant.tensor_type]
    if data.shape[-1] % quant.block:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


# --- the tokenizer ------------------------------------------------------------------------

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER, TOKEN_UNUSED = 1, 3, 4, 5


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer: GPT-2's byte-level regex is the one the native
    tokenizers and SmolLM2 use; other splitting rules are refused rather than mis-tokenised."""
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    raise ConfigError(
        f"the tokenizer's pre-tokenizer {json.dumps(spec)[:120]} has no llama.cpp counterpart "
        "that lmforge knows; only byte-level BPE with GPT-2's split (ByteLevel, use_regex) is "
        "exported to GGUF"
    )


def tokenizer_fields(tokenizer: Tokenizer, n_vocab: int) -> dict[str, object]:
    """The tokenizer.ggml.* values of a byte-level BPE tokenizer, padded to `n_vocab` tokens."""
    spec = json.loads(tokenizer.hf.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConfigError("only byte-level BPE tokenizers are exported to GGUF")
    specials = {t["id"]: t["special"] for t in spec.get("added_tokens", [])}
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    if len(vocab) > n_vocab:
        raise ConfigError(
            f"the tokenizer has {len(vocab)} tokens but the model only {n_vocab} embeddings"
        )
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [TOKEN_UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = (
            TOKEN_NORMAL if i not in specials else (TOKEN_CONTROL if specials[i] else TOKEN_USER)
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "pre": _pre_tokenizer(spec.get("pre_tokenizer") or {}),
        "tokens": tokens,
        "types": types,
        "merges": merges,
    }


def _add_tokenizer(writer: object, tokenizer: Tokenizer, n_vocab: int, template: str) -> None:
    fields = tokenizer_fields(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(fields["pre"])
    writer.add_token_list(fields["tokens"])
    writer.add_token_types(fields["types"])
    writer.add_token_merges(fields["merges"])
    writer.add_add_bos_token(False)  # lmforge's prompts carry their specials in the text
    bos = tokenizer.token_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
    for add, token_id in (
        (writer.add_bos_token_id, bos),
        (writer.add_eos_token_id, tokenizer.eos_id),
        (writer.add_pad_token_id, tokenizer.pad_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_chat_template(template)


def _add_shape(writer: object, c: ModelConfig) -> None:
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.d_ff)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_kv_head)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)


@torch.no_grad()
def write_gguf(
    model: CausalLM, tokenizer: Tokenizer, path: str | Path, quant: str, template: str, name: str
) -> Path:
    """Write `model` with `tokenizer` and its chat `template` as one GGUF file at `path`."""
    import gguf

    if quant not in QUANTS:
        raise ConfigError(
            f"quant {quant!r} is unknown", fix="choose {quant} from " + ", ".join(QUANTS.names())
        )
    q = QUANTS.get(quant)
    arch, tensors = arrange(model)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(q.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_shape(writer, model.config)
    _add_tokenizer(writer, tokenizer, model.config.vocab_size, template)
    for tensor_name, tensor in tensors.items():
        data, raw_type = _stored(tensor, q)
        writer.add_tensor(tensor_name, data, raw_shape=None, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path
