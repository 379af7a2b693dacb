"""Which transformers configs import natively, and the native ModelConfig they give.

A checkpoint's config.json is read as plain JSON when it states every field whose default
differs between transformers' config classes; only otherwise is transformers' AutoConfig
asked (importing transformers costs about a second and ~80 MB, which loading a native
model does not need). Both readings give the same ModelConfig (tests/test_hf_config.py).

Which checkpoints qualify is the registry of families in hf_families.py (Llama, Mistral,
Qwen2, Mixtral, Qwen2-MoE and lmforge's own format). A checkpoint that uses something the
native model does not compute (scaled RoPE, a sliding window shorter than the context,
biases it lacks) raises ConfigError instead of giving wrong logits without a word.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmforge.config import from_dict
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.config import ModelConfig
from lmforge.model.hf_families import COMMON_CHECKS, FAMILIES, rope_parameters

CONFIG_FILE = "config.json"


def family_targets(model_type: str) -> list[str]:
    """The default delta targets of the family whose config.model_type this is."""
    for arch in FAMILIES:
        if FAMILIES.get(arch).model_type == model_type:
            return list(FAMILIES.get(arch).targets)
    known = sorted(FAMILIES.get(a).model_type for a in FAMILIES)
    raise ConfigError(
        f"model type {model_type!r} has no default delta targets (families with defaults: "
        f"{', '.join(known)})",
        fix="name them, e.g. {targets=[q_proj, v_proj]}",
    )


def architecture_of(c: Any) -> str:
    names = getattr(c, "architectures", None) or []
    if names:
        return names[0]
    by_type = {FAMILIES.get(a).model_type: a for a in FAMILIES}
    model_type = getattr(c, "model_type", "")
    return by_type.get(model_type, f"(model_type {model_type!r})")


def _sliding_window(c: Any) -> int | None:
    """The attention window if some layer actually uses one, else None."""
    window = getattr(c, "sliding_window", None)
    layer_types = getattr(c, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def config_from_hf(
    hf_config: Any, *, max_seq_len: int | None = None, architecture: str | None = None
) -> ModelConfig:
    """The native ModelConfig computing what the transformers config computes.

    max_seq_len defaults to max_position_embeddings, capped at the sliding window
    where one is active: up to that length the window masks nothing, so logits match.
    """
    arch = architecture or architecture_of(hf_config)
    if arch not in FAMILIES:
        raise ConfigError(
            f"transformers architecture {arch} cannot be imported natively; "
            f"supported: {', '.join(FAMILIES.names())} (use backend='hf' for others)"
        )
    family = FAMILIES.get(arch)
    problems = [p for check in COMMON_CHECKS + family.checks if (p := check(hf_config))]
    if problems:
        raise ConfigError(f"{arch} uses {'; '.join(problems)}: logits would not match")
    c = hf_config
    window = _sliding_window(c)
    limit = c.max_position_embeddings if window is None else min(c.max_position_embeddings, window)
    if max_seq_len is None:
        max_seq_len = limit
    elif window is not None and max_seq_len > window:
        raise ConfigError(
            f"{arch} attends through a sliding window of {window} tokens, which the native "
            f"model does not implement; max_seq_len={max_seq_len} must be <= {window}"
        )
    common = dict(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_kv_head=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        d_ff=c.intermediate_size,
        activation=getattr(c, "hidden_act", "silu"),
        max_seq_len=max_seq_len,
        rope_theta=float(rope_parameters(c)["rope_theta"]),
        norm_eps=float(c.rms_norm_eps),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        attention_bias=family.qkv_bias(c),
        init_std=float(getattr(c, "initializer_range", 0.02)),
    )
    fields = {**common, **family.fields(c), "max_seq_len": max_seq_len}
    return from_dict(ModelConfig, fields, f"{arch} config")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-save the checkpoint") from None


# Fields whose transformers default differs between the families (or from what their
# absence means to config_from_hf): a config.json must state them to be read as plain JSON.
STATED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
)


def plain_config(raw: dict) -> SimpleNamespace | None:
    """config.json as attributes, when it alone fixes what config_from_hf reads; else None."""
    arch = architecture_of(SimpleNamespace(**raw))
    if arch not in FAMILIES or FAMILIES.get(arch).model_type != raw.get("model_type"):
        return None
    theta_stated = "rope_theta" in raw or "rope_theta" in (raw.get("rope_parameters") or {})
    if not theta_stated or any(name not in raw for name in STATED):
        return None
    extra = FAMILIES.get(arch).plain(raw)
    return None if extra is None else SimpleNamespace(**{**raw, **extra})


def load_hf_config(path: str | Path) -> Any:
    """The config of a checkpoint directory: its config.json as attributes when that states
    everything (see plain_config), else as transformers' AutoConfig reads it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory holding a transformers checkpoint")
    raw = read_json(path / CONFIG_FILE)
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise CheckpointError(f"{path / CONFIG_FILE} has no 'model_type' field")
    plain = plain_config(raw)
    if plain is not None:
        return plain
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: transformers cannot read it ({e})") from None
