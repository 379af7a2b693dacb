"""Specification methods: train a chosen subset of the model's own parameters.

BitFit (Ben Zaken et al., 2022) trains only the bias terms, y = W x + b with W frozen.

Llama-family models (and lmforge's native decoder) have NO biases in their linear layers.
Here BitFit therefore ADDS a bias, initialised to zero, to every target linear layer
(default "all-linear": every linear layer but the output head) and trains only those, so
the model is unchanged at initialisation. A bias that already exists (Qwen2's q/k/v
projections) is unfrozen and trained from its current value. RMSNorm has no bias, so
unlike the paper's BERT setting no normalisation parameters are trained.

The bias is put on the layer itself: `nn.Linear.bias` becomes a parameter (name
`...q_proj.bias`, as in checkpoints that have biases). A linear-like base that is not an
nn.Linear (a quantized layer) is wrapped instead as `...q_proj.base_layer` plus the same
`...q_proj.bias`. Either way the trained bias already is part of the layer, so `merge()`
and `unmerge()` change nothing (the method reports mergeable: no added latency). Note that
a native model with added biases no longer matches the bias-free transformers Llama
layout when exported.

"named" trains the parameters whose names match any of a list of regular expressions
(`re.search`, e.g. `["norm", r"layers\\.1\\.mlp\\."]`) — the general form of the family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import float_placement
from lmforge.model.targets import match_targets, replace_module
from lmforge.peft.base import DeltaMethod, freeze, register


@dataclass
class BitFitConfig:
    targets: list[str] | str | None = "all-linear"  # linear layers whose bias trains


class AddedBias(nn.Module):
    """base(x) + b, for a linear-like base whose forward does not take a bias."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        device, dtype = float_placement(base)
        self.base_layer = base
        self.bias = nn.Parameter(torch.zeros(base.out_features, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.bias  # (..., out)


class _NoOpMerge(DeltaMethod):
    """The trained tensors are the model's own parameters: there is nothing to fold in."""

    mergeable = True

    def merge(self) -> None:
        self.merged = True

    def unmerge(self) -> None:
        self.merged = False


@register
class BitFit(_NoOpMerge):
    """Train (and where missing, add zero-initialised) biases of the target linear layers."""

    name = "bitfit"
    family = "specification"
    Config = BitFitConfig

    def __init__(self, config: BitFitConfig | None = None) -> None:
        super().__init__(config)
        self.added: list[str] = []  # layers that got a new bias from apply()

    def inject(self, model: nn.Module) -> nn.Module:
        names = match_targets(model, self.config.targets)
        freeze(model)
        self.added = []
        for name in names:
            layer = model.get_submodule(name)
            bias = getattr(layer, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
                continue
            self.added.append(name)
            if isinstance(layer, nn.Linear):
                w = layer.weight
                layer.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
            else:
                replace_module(model, name, AddedBias(layer))
        self.model = model
        return model


@dataclass
class NamedConfig:
    patterns: list[str] = field(default_factory=list)  # regexes searched in parameter names

    def validate(self) -> None:
        if not self.patterns:
            raise ConfigError(
                "named.patterns is empty; give regular expressions over parameter names, "
                "e.g. ['norm', 'layers\\.1\\.mlp\\.']"
            )
        _compile(self.patterns)


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"named.patterns: {p!r} is not a regular expression ({e})") from None
    return compiled


def _sample_names(model: nn.Module, limit: int = 12) -> list[str]:
    """Parameter names for an error message: skip repeats of later layers (layers.N, N ≥ 1)."""
    names = [n for n, _ in model.named_parameters() if not re.search(r"layers\.[1-9]\d*\.", n)]
    return names[:limit]


@register
class NamedParameters(_NoOpMerge):
    """Train exactly the parameters whose names match one of `patterns`."""

    name = "named"
    family = "specification"
    Config = NamedConfig

    def inject(self, model: nn.Module) -> nn.Module:
        compiled = _compile(self.config.patterns)
        # Tied tensors are visited under every name, so "lm_head" selects a tied head too.
        chosen = [
            p
            for n, p in model.named_parameters(remove_duplicate=False)
            if any(r.search(n) for r in compiled)
        ]
        if not chosen:
            raise ConfigError(
                f"named.patterns {self.config.patterns} match no parameter of this model; "
                f"its parameters are named like: {', '.join(_sample_names(model))}"
            )
        freeze(model)
        for p in chosen:
            p.requires_grad_(True)
        self.model = model
        return model
