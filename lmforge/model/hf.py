"""Import and export transformers checkpoints of the Llama family, with logit parity.

The native decoder is the Llama computation, and its module names are those of
`LlamaForCausalLM`, so a checkpoint maps one to one: no tensor is renamed,
split or permuted (transformers' Llama weights already use the "rotate half"
RoPE layout of attention.py).

    config.json ──► config_from_hf ──► ModelConfig ──► CausalLM skeleton (meta device)
    *.safetensors ──► tensor by tensor (memory-mapped) ─► its parameters

Which checkpoints qualify, and how their config.json becomes a ModelConfig, is
hf_config.py.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from lmforge.atomic import atomic_directory
from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import CausalLM
from lmforge.model.hf_config import CONFIG_FILE, config_from_hf, load_hf_config
from lmforge.model.hf_config import read_json as _read_json
from lmforge.model.mtp import PREFIX, head_tensors, load_heads, save_heads
from lmforge.model.weights import SafetensorsFile
from lmforge.tokenizer import Tokenizer

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


# ------------------------------------------------------------------------------------ import


def _ignorable(name: str, tied: bool) -> bool:
    # Old checkpoints stored RoPE frequencies; a tied head may be saved beside the embedding.
    return name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight")


def _check_names(model: CausalLM, where: Mapping[str, str], origin: str) -> dict[str, Tensor]:
    """The tensors to load (name → meta placeholder); CheckpointError if the names differ."""
    tied = model.config.tie_embeddings
    targets = model.state_dict(keep_vars=True)
    if tied:
        targets.pop("lm_head.weight")
    missing = [n for n in targets if n not in where]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{origin}: tensor {missing[0]!r}{more} is missing; the weights do not belong "
            "to the model that config.json describes"
        )
    unexpected = [n for n in where if n not in targets and not _ignorable(n, tied)]
    if unexpected:
        raise CheckpointError(
            f"{where[unexpected[0]]}: unexpected tensor {unexpected[0]!r} "
            f"({len(unexpected)} in all); is this a Llama-family causal LM checkpoint?"
        )
    return targets


def _build(
    config: ModelConfig,
    where: Mapping[str, str],
    read: Callable[[str], Tensor],
    origin: str,
    dtype: torch.dtype,
    device: torch.device | str,
    on_module: Callable[[CausalLM, str], None] | None = None,
) -> CausalLM:
    """A CausalLM whose parameters are the tensors `read(name)` returns; `where[name]` says
    which file holds each. The model is built on the meta device and never initialised:
    the checkpoint replaces every weight, and initialising 135M parameters costs seconds.
    A tensor already in `dtype` on `device` is used as it is, without a copy. `on_module`,
    if given, is called with each module name as soon as all its tensors are in (a quantizer
    there means the model never holds more than one float layer beyond what it keeps)."""
    with torch.device("meta"):
        model = CausalLM(config)
    names = _check_names(model, where, origin)
    pending = Counter(name.rpartition(".")[0] for name in names)  # tensors left per module
    for name, placeholder in names.items():
        tensor = read(name)
        if tensor.shape != placeholder.shape:
            raise CheckpointError(
                f"{where[name]}: tensor {name!r} has shape {tuple(tensor.shape)}, but "
                f"config.json implies {tuple(placeholder.shape)}"
            )
        owner, _, attr = name.rpartition(".")
        tensor = tensor.to(device=device, dtype=dtype)
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(tensor))
        pending[owner] -= 1
        if on_module is not None and not pending[owner]:  # complete: hand it over right away
            on_module(model, owner)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers (RoPE frequencies) are in no checkpoint; a one-layer twin built
    # for real holds the same values, since they depend on the config only.
    twin = dict(CausalLM(config.replace(n_layer=1, vocab_size=1)).named_buffers())
    for name, _ in list(model.named_buffers()):
        owner, _, attr = name.rpartition(".")
        value = twin.get(re.sub(r"layers\.\d+\.", "layers.0.", name))
        if value is None:  # a quantized layer's own buffers, already filled
            continue
        setattr(model.get_submodule(owner), attr, value.to(device=device))
    return model


def from_hf(hf_model: torch.nn.Module, *, max_seq_len: int | None = None) -> CausalLM:
    """A native copy of a transformers Llama/Mistral/Qwen2 causal LM, same dtype and device."""
    config = config_from_hf(
        hf_model.config, max_seq_len=max_seq_len, architecture=type(hf_model).__name__
    )
    first = next(hf_model.parameters())
    state = hf_model.state_dict()
    where = dict.fromkeys(state, f"{type(hf_model).__name__} state_dict")

    def read(name: str) -> Tensor:
        return state[name].detach().clone()  # a copy: the two models must not share weights

    model = _build(config, where, read, type(hf_model).__name__, first.dtype, first.device)
    return model.train(hf_model.training)


def weight_files(path: Path) -> list[Path]:
    # Like transformers: a single model.safetensors first, then a sharded index.
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    if (path / INDEX_FILE).is_file():
        weight_map = _read_json(path / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path / INDEX_FILE} has no 'weight_map'; re-save the model")
        shards = [path / name for name in dict.fromkeys(weight_map.values())]
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"{shard} is missing (listed in {path / INDEX_FILE})")
        return shards
    pickled = sorted(p.name for p in path.glob("*.bin"))
    hint = (
        f"found only pickle weights ({', '.join(pickled)}), which lmforge never loads; "
        "re-save with save_pretrained(..., safe_serialization=True)"
        if pickled
        else "save the model with save_pretrained or lmforge's save_hf_dir"
    )
    raise CheckpointError(f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE}; {hint}")


def load_hf_dir(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_seq_len: int | None = None,
    on_module: Callable[[CausalLM, str], None] | None = None,
) -> CausalLM:
    """A native CausalLM from a transformers directory (config.json + safetensors), in eval mode.

    on_module(model, name) is called as soon as each module's tensors are in (hub.py quantizes
    there, so a 4-bit model never holds the float one).

    The tensors are read straight from the safetensors files, one at a time, so
    no transformers model is built and peak memory stays near one model's worth.
    """
    path = Path(path)
    config = config_from_hf(load_hf_config(path), max_seq_len=max_seq_len)
    files = weight_files(path)
    with ExitStack() as stack:
        handles, where = {}, {}
        for file in files:
            try:
                handle = stack.enter_context(SafetensorsFile(file))
            except CheckpointError as e:
                raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is no dict)
                handles[name], where[name] = handle, str(file)

        def read(name: str) -> Tensor:
            try:
                return handles[name].get_tensor(name)
            except (CheckpointError, OSError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"{where[name]}: cannot read tensor {name!r} ({e})") from None

        origin = str(files[0] if len(files) == 1 else path)
        model = _build(config, where, read, origin, dtype, device, on_module)
    load_heads(model, path)  # multi-token heads saved beside the weights, if any
    return model.eval()


# ------------------------------------------------------------------------------------ export


def to_hf_config(
    config: ModelConfig, dtype: torch.dtype = torch.float32, biases: dict[str, bool] | None = None
) -> Any:
    """The transformers config of a native model: Llama, or Qwen2 when q/k/v carry biases
    (Llama's attention_bias would add an o_proj bias the native model does not have).
    `biases` ({"attention_bias": True, "mlp_bias": True}, from `added_biases`) asks for a
    Llama with biases on every attention and/or MLP projection."""
    from transformers import LlamaConfig, Qwen2Config

    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu",
        initializer_range=config.init_std,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        dtype=dtype,
    )
    if biases:
        return LlamaConfig(**fields, **biases, architectures=["LlamaForCausalLM"])
    if config.attention_bias:
        return Qwen2Config(**fields, use_sliding_window=False, architectures=["Qwen2ForCausalLM"])
    return LlamaConfig(**fields, attention_bias=False, architectures=["LlamaForCausalLM"])


BIAS_GROUPS = {  # Llama config flag → the projections whose biases it switches on
    "attention_bias": (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    ),
    "mlp_bias": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
}


def added_biases(state: dict[str, Tensor], config: ModelConfig) -> dict[str, bool]:
    """Biases beyond the plain layout (BitFit adds them) as Llama's attention_bias / mlp_bias:
    the flags to set, with `state` completed in place by zero biases on the other projections
    of each group switched on (zero changes nothing). {} when there are none."""
    with torch.device("meta"):
        plain = set(CausalLM(config).state_dict())
    extra = [n.rsplit(".", 1)[0] for n in state if n not in plain and n.endswith(".bias")]
    flags = {
        flag: True for flag, group in BIAS_GROUPS.items() if any(m.endswith(group) for m in extra)
    }
    if flags and config.attention_bias:  # q/k/v biases need Llama's flag (o_proj's is zero)
        flags["attention_bias"] = True
    for flag in flags:
        for layer in range(config.n_layer):
            for projection in BIAS_GROUPS[flag]:
                weight = state[f"model.layers.{layer}.{projection}.weight"]
                state.setdefault(
                    f"model.layers.{layer}.{projection}.bias", weight.new_zeros(weight.shape[0])
                )
    return flags


def _save_tokenizer(tokenizer: Tokenizer | str | Path, path: Path) -> dict[str, int | None]:
    """Write the tokenizer beside the weights; return its special-token ids for config.json.
    `tokenizer` is an lmforge Tokenizer or a directory transformers reads one from."""
    if isinstance(tokenizer, Tokenizer):
        tokenizer.save(path / "tokenizer.json")
        bos = tokenizer.token_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
        return {
            "bos_token_id": bos,
            "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id,
        }
    from transformers import AutoTokenizer

    source = Path(tokenizer)
    try:
        loaded = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: no tokenizer transformers can load ({e})") from None
    loaded.save_pretrained(path)
    if (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", path / "generation_config.json")
    return {
        "bos_token_id": loaded.bos_token_id,
        "eos_token_id": loaded.eos_token_id,
        "pad_token_id": loaded.pad_token_id,
    }


def save_hf_dir(
    model: CausalLM, path: str | Path, tokenizer: Tokenizer | str | Path | None = None
) -> Path:
    """Write config.json + model.safetensors (and the tokenizer) that transformers loads.
    Biases added to the projections (BitFit) are written as a Llama with biases.

    The directory is built beside `path` and takes its place whole (a directory that
    exists is the complete export), replacing an earlier export there; a directory of
    anything else is refused before anything is written. Multi-token heads (model/mtp.py)
    go beside the weights in their own file, which transformers ignores.
    """
    path, config = Path(path), model.config
    with torch.device("meta"):
        expected = set(CausalLM(config).state_dict())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(PREFIX)}
    heads = head_tensors(model.state_dict())
    biases = added_biases(state, config)
    if biases:
        expected |= {n for n in state if n.endswith(".bias")}
    if set(state) != expected:
        extra = sorted(set(state) ^ expected)
        raise CheckpointError(
            f"cannot export to {path}: tensor {extra[0]!r} is not a plain decoder weight; "
            "merge or remove adapters before exporting"
        )
    if config.tie_embeddings:
        state.pop("lm_head.weight")  # transformers re-ties it from tie_word_embeddings
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    hf_config = to_hf_config(config, dtype=next(iter(tensors.values())).dtype, biases=biases)
    try:
        with atomic_directory(path, lambda p: (p / CONFIG_FILE).is_file()) as tmp:
            if tokenizer is not None:
                for key, value in _save_tokenizer(tokenizer, tmp).items():
                    setattr(hf_config, key, value)
            save_file(tensors, str(tmp / WEIGHTS_FILE), {"format": "pt"})
            if heads:
                save_heads(heads, model.mtp_heads.n_future, tmp)
            (tmp / CONFIG_FILE).write_text(hf_config.to_json_string(use_diff=False))
    except FileExistsError:
        raise CheckpointError(
            f"{path} exists and holds files that are not an exported model; export to another "
            "directory"
        ) from None
    return path
