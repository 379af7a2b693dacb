"""Which linear layers of a model a method acts on, and swapping a module in place.

Targets are written the way peft users know them:

    ["q_proj", "v_proj"]           modules whose name is, or ends with, one of these
    "re:.*layers\\.[01]\\..*proj"    a regular expression (after "re:") matched in full
    "all-linear"                   every linear layer except the output head
    None                           the model family's default targets (model/hf_config.py)

Native models carry transformers' Llama module names, so one list serves both kinds.
Delta methods (peft/) and quantization (quant/) select their layers here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from lmforge.errors import ConfigError
from lmforge.model.hf_config import family_targets

OUTPUT_HEADS = ("lm_head", "score", "classifier")


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or anything linear-like (a quantized base): in and out features."""
    return isinstance(module, nn.Linear) or (
        hasattr(module, "in_features") and hasattr(module, "out_features")
    )


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and is_linear(m)]


def default_targets(model: nn.Module) -> list[str]:
    """The family's default targets; a native model computes what LlamaForCausalLM does."""
    model_type = getattr(getattr(model, "config", None), "model_type", None) or "llama"
    return family_targets(model_type)


def _suffix_match(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def match_targets(
    model: nn.Module, targets: Sequence[str] | str | None, field: str = "targets"
) -> list[str]:
    """Full names of the linear modules `targets` selects, in model order. Every entry of a
    list must select something; `field` names the setting in errors."""
    targets = default_targets(model) if targets is None else targets
    names = linear_names(model)
    if targets == "all-linear":
        found = [n for n in names if n.rsplit(".", 1)[-1] not in OUTPUT_HEADS]
    elif isinstance(targets, str):
        if not targets.startswith("re:"):
            raise ConfigError(
                f"{field} {targets!r}: give a list of module names, 'all-linear', or a regular "
                "expression prefixed with 're:'"
            )
        pattern = re.compile(targets[3:])
        found = [n for n in names if pattern.fullmatch(n)]
    else:
        missing = [t for t in targets if not any(_suffix_match(n, t) for n in names)]
        if missing and len(missing) < len(targets):
            raise ConfigError(
                f"{field} entry {missing[0]!r} names no linear module of this model; "
                f"names that could match: {', '.join(_suffixes(names))}"
            )
        found = [n for n in names if any(_suffix_match(n, t) for t in targets)]
    if not found:
        raise ConfigError(
            f"{field} {targets!r} match no linear module of this model; "
            f"names that could match: {', '.join(_suffixes(names))}"
        )
    return found


def _suffixes(names: list[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where submodule `name` is; returns the module that was there."""
    old = model.get_submodule(name)
    model.set_submodule(name, new)
    return old
