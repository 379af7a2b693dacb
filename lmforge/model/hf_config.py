"""Which transformers configs import natively, and the native ModelConfig they give.

A checkpoint's config.json is read as plain JSON when it states every field whose default
differs between transformers' config classes; only otherwise is transformers' AutoConfig
asked (importing transformers costs about a second and ~80 MB, which loading a native
model does not need). Both readings give the same ModelConfig (tests/test_hf_config.py).

Which checkpoints qualify is a registry of architectures (Llama, Mistral, Qwen2). A
checkpoint that uses something the native model does not compute (scaled RoPE, a sliding
window shorter than the context, biases it lacks) raises ConfigError instead of giving
wrong logits without a word.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.config import ModelConfig
from lmforge.registry import Registry

CONFIG_FILE = "config.json"

# A check looks at a transformers config and names what would break parity, or returns None.
Check = Callable[[Any], "str | None"]


def _rope_parameters(c: Any) -> dict:
    # transformers ≥ 5 keeps rope_theta inside rope_parameters; older configs had both apart.
    params = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(c, "rope_theta", 10000.0))
    return params


def _check_activation(c: Any) -> str | None:
    act = getattr(c, "hidden_act", "silu")
    return None if act == "silu" else f"hidden_act={act!r} (the native MLP is SwiGLU with SiLU)"


def _check_rope(c: Any) -> str | None:
    params = _rope_parameters(c)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
        return f"RoPE type {kind!r} (only unscaled RoPE is implemented natively)"
    if params.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) != 1.0:
        return "partial_rotary_factor != 1 (the native model rotates whole heads)"
    return None


def _check_mlp_bias(c: Any) -> str | None:
    return "mlp_bias=True (the native MLP has no biases)" if getattr(c, "mlp_bias", False) else None


def _check_not_quantized(c: Any) -> str | None:
    quant = getattr(c, "quantization_config", None)
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else quant.quant_method
    return f"quantized weights (quant_method {method!r}); dequantize them first"


def _check_llama_attention_bias(c: Any) -> str | None:
    if getattr(c, "attention_bias", False):
        return "attention_bias=True also biases o_proj, which the native attention lacks"
    return None


COMMON_CHECKS: tuple[Check, ...] = (
    _check_activation,
    _check_rope,
    _check_mlp_bias,
    _check_not_quantized,
)


def _no_window_rules(raw: dict) -> dict | None:
    return {}


def _mistral_window(raw: dict) -> dict | None:
    # transformers' default window is 4096; layer_types is for other classes.
    return {} if "sliding_window" in raw and "layer_types" not in raw else None


def _qwen2_window(raw: dict) -> dict | None:
    # Without use_sliding_window transformers drops the window whatever its size.
    return None if raw.get("use_sliding_window", False) else {"sliding_window": None}


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' config.model_type
    qkv_bias: Callable[[Any], bool]  # whether q/k/v projections carry a bias
    checks: tuple[Check, ...] = field(default=())  # family-specific parity checks
    # From config.json as read: attributes to set so that it means what transformers reads
    # into it, or None when only transformers can tell.
    plain: Callable[[dict], dict | None] = _no_window_rules
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # default delta targets (LoRA's paper)


FAMILIES: Registry[Family] = Registry("transformers architecture")
FAMILIES.add("LlamaForCausalLM", Family("llama", lambda c: False, (_check_llama_attention_bias,)))
FAMILIES.add("MistralForCausalLM", Family("mistral", lambda c: False, plain=_mistral_window))
FAMILIES.add("Qwen2ForCausalLM", Family("qwen2", lambda c: True, plain=_qwen2_window))


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


def _architecture(c: Any) -> str:
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
    arch = architecture or _architecture(hf_config)
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
    config = ModelConfig(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_kv_head=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        d_ff=c.intermediate_size,
        max_seq_len=max_seq_len,
        rope_theta=float(_rope_parameters(c)["rope_theta"]),
        norm_eps=float(c.rms_norm_eps),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        attention_bias=family.qkv_bias(c),
        init_std=float(getattr(c, "initializer_range", 0.02)),
    )
    config.validate()
    return config


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
    arch = _architecture(SimpleNamespace(**raw))
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
