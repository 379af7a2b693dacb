"""Finding the modules a delta method acts on, and swapping them in place.

Targets are given the way peft users know them:

    ["q_proj", "v_proj"]        a list: modules whose name is, or ends with, one of these
    "re:.*layers\\.[01]\\..*proj"  a string after "re:": a regular expression matched in full
    "all-linear"                every linear layer except the output head (QLoRA's choice)

Native models carry transformers' Llama module names, so one list serves both backends.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.registry import Registry

# Default targets per model type (config.model_type; native models report "lmforge").
DEFAULT_TARGETS: Registry[list[str]] = Registry("default target list")
for _family in ("lmforge", "llama", "mistral", "qwen2"):
    DEFAULT_TARGETS.add(_family, ["q_proj", "v_proj"])

OUTPUT_HEADS = ("lm_head", "score", "classifier")


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or "lmforge"


def default_targets(model: nn.Module) -> list[str]:
    return list(DEFAULT_TARGETS.get(model_type(model)))


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or anything linear-like (a quantized base): 2-D weight and in/out features."""
    return isinstance(module, nn.Linear) or (
        hasattr(module, "in_features") and hasattr(module, "out_features")
    )


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and is_linear(m)]


def match_targets(model: nn.Module, targets: Sequence[str] | str | None) -> list[str]:
    """Full names of the linear modules that `targets` selects; an error if none."""
    targets = default_targets(model) if targets is None else targets
    names = linear_names(model)
    if targets == "all-linear":
        found = [n for n in names if n.rsplit(".", 1)[-1] not in OUTPUT_HEADS]
    elif isinstance(targets, str):
        if not targets.startswith("re:"):
            raise ConfigError(
                f"targets {targets!r}: give a list of module names, 'all-linear', or a regular "
                "expression prefixed with 're:'"
            )
        pattern = re.compile(targets[3:])
        found = [n for n in names if pattern.fullmatch(n)]
    else:
        found = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    if not found:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(
            f"targets {targets!r} match no linear module of this model; "
            f"names that could match: {', '.join(suffixes)}"
        )
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where submodule `name` is; returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared tensors once and a quantized layer's weight as the
    in × out parameters it stands for (its packed codes are buffers)."""
    unique = {id(p): p for p in model.parameters()}.values()
    packed = sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "qweight"))
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return trainable, sum(p.numel() for p in unique) + packed


def float_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and the floating dtype a layer or model computes in. A quantized base stores
    packed integers, and a 16-bit stored embedding (quant/embed16.py) is widened on use: their
    `compute_dtype` counts, not their storage."""
    from lmforge.quant.embed16 import Stored16

    tensors = list(module.parameters()) + list(module.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    stored = {id(m.weight) for m in module.modules() if isinstance(m, Stored16)}
    floats = [t.dtype for t in tensors if t.is_floating_point() and id(t) not in stored]
    dtype = getattr(module, "compute_dtype", None) or (floats[0] if floats else torch.float32)
    return device, dtype
