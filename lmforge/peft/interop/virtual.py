"""Virtual-token methods in Hugging Face PEFT's directory layout, both ways.

    directory/
      adapter_config.json        peft_type, num_virtual_tokens, token_dim, num_layers, ...
      adapter_model.safetensors  one tensor, "prompt_embeddings"

peft keeps only what the model reads, never a reparameterising encoder:

    peft_type       prompt_embeddings              lmforge method
    PROMPT_TUNING   (P, d) input embeddings        prompt; also prefix with embedding_only
    PREFIX_TUNING   (P, L·2·n_kv·hd) folded prefix prefix (folded); also ptuning2
    P_TUNING        (P, d) the encoder's output    ptuning (folded), pseudo tokens all before

The prefix's features are laid out ((layer·2 + key/value)·n_kv + head)·hd + i, with
token_dim = n_kv·hd and num_attention_heads = n_kv for grouped-query models (peft's
convention, which lmforge's cache prefill follows), and prefix_projection=False: the file
holds the folded prefix whether or not an MLP trained it. A directory written here loads with
`peft.PeftModel.from_pretrained(base, directory)`, and one peft wrote loads with
`load_peft_virtual(directory, model)` onto a transformers model or its native import; the
loaded method is the folded form (prefix projection=False, ptuning encoder="none").

peft has no infix, no P-tuning template or placeholder and no classification head of
P-tuning v2 in these formats: saving those raises ConfigError naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.host import Geometry, host_for
from lmforge.peft.interop.lora import CONFIG_FILE, WEIGHTS_FILE, base_name, read_adapter_dir
from lmforge.peft.prefix import PrefixConfig, PrefixTuning
from lmforge.peft.prompt_tuning import PromptTuning, PromptTuningConfig
from lmforge.peft.ptuning import PTuning, PTuningConfig
from lmforge.peft.virtual import VirtualTokenMethod
from lmforge.registry import Registry

KEY = "prompt_embeddings"


def _common(method: VirtualTokenMethod, peft_type: str, token_dim: int, heads: int) -> dict:
    g: Geometry = method.geometry
    return {
        "peft_type": peft_type,
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
        "num_virtual_tokens": method.config.num_virtual_tokens,
        "token_dim": token_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": heads,
        "num_layers": g.n_layer,
        "modules_to_save": None,
        "revision": None,
    }


def _prompt_tuning(method: VirtualTokenMethod) -> dict[str, Any]:
    g = method.geometry
    return {
        **_common(method, "PROMPT_TUNING", g.width, g.n_head),
        "prompt_tuning_init": "RANDOM",  # the init is history: the file holds the trained rows
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }


def _prefix_tuning(method: VirtualTokenMethod) -> dict[str, Any]:
    g = method.geometry
    token_dim = g.n_kv_head * g.head_dim
    return {
        **_common(method, "PREFIX_TUNING", token_dim, g.n_kv_head),
        "encoder_hidden_size": token_dim,
        "prefix_projection": False,
        "init_weights": None,
    }


def _write_prefix(method: VirtualTokenMethod) -> dict[str, Any]:
    if not method.config.embedding_only:
        return _prefix_tuning(method)
    if method.config.placement != "prefix":
        raise ConfigError(
            f"prefix.placement={method.config.placement!r} has no peft format (peft prepends "
            "its virtual tokens); only placement='prefix' can be saved for peft"
        )
    return _prompt_tuning(method)  # an embedding-only prefix, folded, is a soft prompt


def _write_ptuning(method: VirtualTokenMethod) -> dict[str, Any]:
    c = method.config
    if c.placeholder_token_id is not None or c.split()[1]:
        raise ConfigError(
            "ptuning: peft's P-tuning reads all pseudo tokens before the input; a template "
            "with [P] after {input} or a placeholder_token_id cannot be saved for peft"
        )
    g = method.geometry
    return {
        **_common(method, "P_TUNING", g.width, g.n_head),
        "encoder_reparameterization_type": "LSTM" if c.encoder == "lstm" else "MLP",
        "encoder_hidden_size": c.hidden or g.width,
        "encoder_num_layers": c.lstm_layers,
        "encoder_dropout": c.dropout,
    }


def _write_ptuning2(method: VirtualTokenMethod) -> dict[str, Any]:
    if method.config.task != "generation":
        raise ConfigError(
            f"ptuning2.task={method.config.task!r}: peft's prefix format has no classification "
            "head; only task='generation' can be saved for peft"
        )
    return _prefix_tuning(method)  # deep prompts without reparameterisation: peft's prefix


# lmforge method name -> the adapter_config.json fields of its peft counterpart.
WRITERS: Registry[Callable[[VirtualTokenMethod], dict[str, Any]]] = Registry(
    "peft virtual-token format"
)
WRITERS.add("prompt", _prompt_tuning)
WRITERS.add("prefix", _write_prefix)
WRITERS.add("ptuning", _write_ptuning)
WRITERS.add("ptuning2", _write_ptuning2)


def save_peft_virtual(
    method: VirtualTokenMethod, directory: str | Path, base_model_name_or_path: str | None = None
) -> Path:
    """Write `method` (applied to a model) as a peft adapter directory."""
    if not isinstance(method, VirtualTokenMethod) or method.model is None:
        raise ConfigError("save_peft_virtual needs a virtual-token method applied to a model")
    if method.name not in WRITERS:
        raise ConfigError(f"{method.name} has no peft format; formats exist for {WRITERS.names()}")
    meta = {
        **WRITERS.get(method.name)(method),
        "base_model_name_or_path": base_model_name_or_path or base_name(method),
    }
    state = method.folded_state()
    tensors = {KEY: state["prompt_encoder.embedding.weight"].contiguous().cpu()}
    directory = Path(directory)
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), {"format": "pt"}))
    atomic_write_json(directory / CONFIG_FILE, meta)
    return directory


# peft_type -> the lmforge method that computes the same from `prompt_embeddings`.
READERS: Registry[Callable[[int], VirtualTokenMethod]] = Registry("peft virtual-token type")
READERS.add("PROMPT_TUNING", lambda P: PromptTuning(PromptTuningConfig(num_virtual_tokens=P)))
READERS.add("PREFIX_TUNING", lambda P: PrefixTuning(PrefixConfig(P, projection=False)))
READERS.add("P_TUNING", lambda P: PTuning(PTuningConfig(P, encoder="none")))


def _check_meta(meta: dict[str, Any], model: nn.Module, path: Path) -> int:
    """num_virtual_tokens, after checking what lmforge computes the same way."""
    kind = meta.get("peft_type")
    if kind not in READERS:
        raise CheckpointError(
            f"{path}: peft_type {kind!r} is not a virtual-token format lmforge reads; "
            f"supported: {', '.join(READERS.names())}"
        )
    if meta.get("task_type", "CAUSAL_LM") != "CAUSAL_LM":
        raise CheckpointError(f"{path}: task_type {meta['task_type']!r}; lmforge reads CAUSAL_LM")
    if meta.get("num_transformer_submodules", 1) != 1:
        raise CheckpointError(f"{path}: num_transformer_submodules != 1 (an encoder-decoder)")
    g = host_for(model).geometry()
    if kind == "PREFIX_TUNING" and meta.get("num_layers", g.n_layer) != g.n_layer:
        raise CheckpointError(
            f"{path}: num_layers={meta['num_layers']}, but this model has {g.n_layer} layers; "
            "the prefix belongs to another model"
        )
    P = meta.get("num_virtual_tokens")
    if not isinstance(P, int) or P <= 0:
        raise CheckpointError(f"{path}: num_virtual_tokens must be a positive integer, got {P!r}")
    return P


def load_peft_virtual(directory: str | Path, model: nn.Module) -> VirtualTokenMethod:
    """Apply the peft prompt/prefix/P-tuning adapter in `directory` to `model`."""
    directory = Path(directory)
    meta, state = read_adapter_dir(directory)
    P = _check_meta(meta, model, directory / CONFIG_FILE)
    if set(state) != {KEY}:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: expected the single tensor {KEY!r}, found "
            f"{sorted(state)[:3]}"
        )
    method = READERS.get(meta["peft_type"])(P)
    try:
        method.apply(model)
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: does not fit this model: {e}") from None
    prompt: Tensor = state[KEY]
    method.load_state_dict(
        {"prompt_encoder.embedding.weight": prompt}, origin=str(directory / WEIGHTS_FILE)
    )
    return method
