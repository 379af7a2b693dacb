"""The checkpoint formats the native model reads and writes: one `Family` declaration each.

A family says how its config.json maps onto ModelConfig (`fields` beyond the Llama ones),
what the native model does not compute (`checks`: refused, never silently mis-computed), how
its tensors are named in checkpoint files (`layout`), how a native config is written back in
its format (`export`, None where the family cannot express it) and its default delta targets.

    LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM      dense; names one to one
    MixtralForCausalLM        experts as block_sparse_moe.experts.{i}.w1/w3/w2, renormalised top-k
    Qwen2MoeForCausalLM       experts as mlp.experts.{i}.*_proj, plus a gated shared expert
    LmforgeForCausalLM        anything else the native model computes (RetNet, MoEfied models):
                              native names, the whole ModelConfig under "lmforge" in config.json

The native MoE keeps each layer's experts as stacked (E, ·, ·) tensors, so a layout rule maps
one native tensor onto the E tensors a checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from lmforge.model.config import GATES, ModelConfig
from lmforge.registry import Registry

# A check looks at a transformers config and names what would break parity, or returns None.
Check = Callable[[Any], "str | None"]
NATIVE = "LmforgeForCausalLM"


def rope_parameters(c: Any) -> dict:
    # transformers ≥ 5 keeps rope_theta inside rope_parameters; older configs had both apart.
    params = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(c, "rope_theta", 10000.0))
    return params


# ------------------------------------------------------------------------------ tensor names


@dataclass(frozen=True)
class Rule:
    native: str  # regular expression matching a native tensor name in full
    stored: str  # its name in the checkpoint (\1 … from the expression); {i} = one per expert


@dataclass(frozen=True)
class Layout:
    """How native tensor names map onto checkpoint names; names no rule matches are equal."""

    rules: tuple[Rule, ...] = ()

    def stored(self, name: str, n_experts: int) -> tuple[list[str], bool]:
        """The checkpoint names that hold native tensor `name`, and whether they are stacked."""
        for rule in self.rules:
            match = re.fullmatch(rule.native, name)
            if match:
                template = match.expand(rule.stored)
                if "{i}" in rule.stored:
                    return [template.format(i=i) for i in range(n_experts)], True
                return [template], False
        return [name], False

    def gather(self, name: str, n_experts: int, read: Callable[[str], Tensor]) -> Tensor:
        names, stacked = self.stored(name, n_experts)
        return torch.stack([read(n) for n in names]) if stacked else read(names[0])

    def scatter(self, name: str, tensor: Tensor, n_experts: int) -> dict[str, Tensor]:
        names, stacked = self.stored(name, n_experts)
        if stacked:
            return {n: tensor[i].contiguous() for i, n in enumerate(names)}
        return {names[0]: tensor}


ONE_TO_ONE = Layout()
MIXTRAL_LAYOUT = Layout(
    (
        Rule(r"(.*)\.mlp\.gate\.weight", r"\1.block_sparse_moe.gate.weight"),
        Rule(r"(.*)\.mlp\.experts\.gate_proj", r"\1.block_sparse_moe.experts.{i}.w1.weight"),
        Rule(r"(.*)\.mlp\.experts\.up_proj", r"\1.block_sparse_moe.experts.{i}.w3.weight"),
        Rule(r"(.*)\.mlp\.experts\.down_proj", r"\1.block_sparse_moe.experts.{i}.w2.weight"),
    )
)
QWEN2_MOE_LAYOUT = Layout(
    tuple(
        Rule(rf"(.*)\.mlp\.experts\.{p}", rf"\1.mlp.experts.{{i}}.{p}.weight")
        for p in ("gate_proj", "up_proj", "down_proj")
    )
)

# ------------------------------------------------------------------------------ checks


def _check_activation(c: Any) -> str | None:
    act = getattr(c, "hidden_act", "silu")
    if act in GATES:
        return None
    return f"hidden_act={act!r} (the native gated MLP takes {' or '.join(GATES.names())})"


def _check_rope(c: Any) -> str | None:
    params = rope_parameters(c)
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


def _check_every_layer_sparse(c: Any) -> str | None:
    if getattr(c, "decoder_sparse_step", 1) != 1 or getattr(c, "mlp_only_layers", None):
        return "dense layers between the sparse ones (decoder_sparse_step, mlp_only_layers)"
    return None


COMMON_CHECKS: tuple[Check, ...] = (
    _check_activation,
    _check_rope,
    _check_mlp_bias,
    _check_not_quantized,
)

# ------------------------------------------------------------------------------ config rules


def _no_window_rules(raw: dict) -> dict | None:
    return {}


def _mistral_window(raw: dict) -> dict | None:
    # transformers' default window is 4096; layer_types is for other classes.
    return {} if "sliding_window" in raw and "layer_types" not in raw else None


def _qwen2_window(raw: dict) -> dict | None:
    # Without use_sliding_window transformers drops the window whatever its size.
    return None if raw.get("use_sliding_window", False) else {"sliding_window": None}


def _stating(names: tuple[str, ...], then: Callable[[dict], dict | None]) -> Callable:
    """A plain-reading rule that also needs `names` stated (their defaults live in transformers)."""
    return lambda raw: then(raw) if all(n in raw for n in names) else None


def _no_fields(c: Any) -> dict:
    return {}


def _mixtral_fields(c: Any) -> dict:
    return dict(
        ffn="moe",
        n_experts=c.num_local_experts,
        top_k=c.num_experts_per_tok,
        d_ff_expert=c.intermediate_size,
        norm_topk_prob=True,
        aux_loss_weight=float(getattr(c, "router_aux_loss_coef", 0.01)),
    )


def _qwen2_moe_fields(c: Any) -> dict:
    return dict(
        ffn="moe",
        n_experts=c.num_experts,
        top_k=c.num_experts_per_tok,
        d_ff_expert=c.moe_intermediate_size,
        shared_expert_d_ff=c.shared_expert_intermediate_size,
        norm_topk_prob=bool(c.norm_topk_prob),
        aux_loss_weight=float(getattr(c, "router_aux_loss_coef", 0.01)),
    )


def _native_fields(c: Any) -> dict:
    return dict(c.lmforge)


# ------------------------------------------------------------------------------ export


def _attention_llama(c: ModelConfig) -> bool:
    """Blocks that transformers' Llama-style attention computes."""
    return c.mixer == "attention"


def _no_export(c: ModelConfig) -> dict | None:
    return None


def _llama_export(c: ModelConfig) -> dict | None:
    fits = _attention_llama(c) and c.ffn == "dense" and not c.attention_bias
    return dict(attention_bias=False) if fits else None


def _qwen2_export(c: ModelConfig) -> dict | None:
    fits = _attention_llama(c) and c.ffn == "dense" and c.attention_bias
    return dict(use_sliding_window=False) if fits else None


def _moe_fits(c: ModelConfig) -> bool:
    return _attention_llama(c) and c.ffn == "moe" and c.expert_weights == "router"


def _mixtral_export(c: ModelConfig) -> dict | None:
    if not (_moe_fits(c) and c.norm_topk_prob) or c.shared_expert_d_ff or c.attention_bias:
        return None
    return dict(
        num_local_experts=c.n_experts,
        num_experts_per_tok=c.top_k,
        intermediate_size=c.d_ff_expert,
        router_aux_loss_coef=c.aux_loss_weight,
        sliding_window=None,
    )


def _qwen2_moe_export(c: ModelConfig) -> dict | None:
    if not (_moe_fits(c) and c.shared_expert_d_ff):
        return None
    return dict(
        num_experts=c.n_experts,
        num_experts_per_tok=c.top_k,
        moe_intermediate_size=c.d_ff_expert,
        shared_expert_intermediate_size=c.shared_expert_d_ff,
        norm_topk_prob=c.norm_topk_prob,
        qkv_bias=c.attention_bias,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        router_aux_loss_coef=c.aux_loss_weight,
        use_sliding_window=False,
    )


def _native_export(c: ModelConfig) -> dict | None:
    return dict(lmforge=dataclasses.asdict(c))


# ------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' config.model_type
    qkv_bias: Callable[[Any], bool]  # whether q/k/v projections carry a bias
    checks: tuple[Check, ...] = field(default=())  # family-specific parity checks
    # From config.json as read: attributes to set so that it means what transformers reads
    # into it, or None when only transformers can tell.
    plain: Callable[[dict], dict | None] = _no_window_rules
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # default delta targets (LoRA's paper)
    fields: Callable[[Any], dict] = _no_fields  # ModelConfig fields beyond the Llama ones
    layout: Layout = ONE_TO_ONE  # checkpoint tensor names
    config_class: str | None = None  # the transformers config class export writes
    export: Callable[[ModelConfig], dict | None] = _no_export  # its own fields, None = unfit


FAMILIES: Registry[Family] = Registry("transformers architecture")
FAMILIES.add(
    "LlamaForCausalLM",
    Family(
        "llama",
        lambda c: False,
        (_check_llama_attention_bias,),
        config_class="LlamaConfig",
        export=_llama_export,
    ),
)
FAMILIES.add("MistralForCausalLM", Family("mistral", lambda c: False, plain=_mistral_window))
FAMILIES.add(
    "Qwen2ForCausalLM",
    Family(
        "qwen2",
        lambda c: True,
        plain=_qwen2_window,
        config_class="Qwen2Config",
        export=_qwen2_export,
    ),
)
FAMILIES.add(
    "MixtralForCausalLM",
    Family(
        "mixtral",
        lambda c: False,
        plain=_stating(("num_local_experts", "num_experts_per_tok"), _mistral_window),
        fields=_mixtral_fields,
        layout=MIXTRAL_LAYOUT,
        config_class="MixtralConfig",
        export=_mixtral_export,
    ),
)
QWEN2_MOE_STATED = (
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "norm_topk_prob",
    "qkv_bias",
)
FAMILIES.add(
    "Qwen2MoeForCausalLM",
    Family(
        "qwen2_moe",
        lambda c: bool(getattr(c, "qkv_bias", True)),
        (_check_every_layer_sparse,),
        plain=_stating(QWEN2_MOE_STATED, _qwen2_window),
        fields=_qwen2_moe_fields,
        layout=QWEN2_MOE_LAYOUT,
        config_class="Qwen2MoeConfig",
        export=_qwen2_moe_export,
    ),
)
FAMILIES.add(
    NATIVE,
    Family(
        "lmforge",
        lambda c: bool(c.lmforge["attention_bias"]),
        plain=_stating(("lmforge",), _no_window_rules),
        fields=_native_fields,
        export=_native_export,
    ),
)


class NativeConfig(SimpleNamespace):
    """config.json of the lmforge format: the Llama-style fields for readers that look, and
    the whole ModelConfig under "lmforge" (what loading reads)."""

    def to_json_string(self, use_diff: bool = False) -> str:
        def plain(value: Any) -> Any:
            return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value

        return json.dumps({k: plain(v) for k, v in vars(self).items()}, indent=2) + "\n"


def export_family(config: ModelConfig) -> tuple[str, Family, dict]:
    """The transformers family that computes what `config` computes (else the lmforge format),
    with the fields of its config that the family adds."""
    for arch in FAMILIES:
        if arch != NATIVE and (extra := FAMILIES.get(arch).export(config)) is not None:
            return arch, FAMILIES.get(arch), extra
    return NATIVE, FAMILIES.get(NATIVE), _native_export(config)
