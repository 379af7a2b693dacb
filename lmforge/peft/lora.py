"""LoRA: low-rank adaptation of frozen linear layers (Hu et al., 2021).

A frozen weight W (out × in) learns its update as a product of two thin matrices:

    y = W x + (α / r) · B A x          A: (r × in), B: (out × r), r ≪ min(in, out)

            ┌──────────── base(x) ────────────┐
    x ──────┤                                 (+) ──► y
            └─ dropout ─► A ─► B ─► × scaling ┘

B starts at zero, so the wrapped model computes exactly what the base did. The scaling is
α / r, or α / √r with rank-stabilised LoRA (Kalajdzievski, 2023), which keeps the update's
magnitude steady as r grows. `merge()` adds scaling · B A into W, after which the layer is
the base layer again (no added latency); `unmerge()` subtracts it back.

The wrapper uses only `base(x)` and the base's `in_features`/`out_features`, so it wraps any
linear-like module (nn.Linear, a quantized NF4Linear); merging needs a plain nn.Linear.
Parameter names are peft's without the adapter name: `...q_proj.lora_A.weight`,
`...q_proj.lora_B.weight`, and the wrapped layer lives at `...q_proj.base_layer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import float_placement
from lmforge.model.targets import match_targets, replace_module
from lmforge.peft.base import DeltaMethod, freeze, register
from lmforge.registry import Registry

# How A is initialised (B is always zero, which is what makes the wrapped model unchanged).
LORA_INITS: Registry[Callable[[Tensor, int], None]] = Registry("LoRA initialisation")


@LORA_INITS.register("kaiming")
def _kaiming(a: Tensor, r: int) -> None:
    # nn.Linear's own default (and peft's): uniform with bound 1/√in.
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))


@LORA_INITS.register("gaussian")
def _gaussian(a: Tensor, r: int) -> None:
    nn.init.normal_(a, std=1.0 / r)


@dataclass
class LoraConfig:
    r: int = 8  # rank of the update B·A
    alpha: float = 16.0  # numerator of the scaling: α/r (or α/√r with rslora)
    dropout: float = 0.0  # dropout on the input of the low-rank path
    targets: list[str] | str | None = None  # modules to adapt; None = the model type's default
    rslora: bool = False  # rank-stabilised scaling α/√r (Kalajdzievski, 2023) instead of α/r
    init: str = "kaiming"  # initialisation of A: kaiming (peft's default) | gaussian

    def validate(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"lora.r must be a positive rank, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.init not in LORA_INITS:
            raise ConfigError(
                f"lora.init {self.init!r} is unknown; choose from {LORA_INITS.names()}"
            )
        if isinstance(self.targets, list) and not self.targets:
            raise ConfigError("lora.targets is an empty list; name modules or leave it unset")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoraLinear(nn.Module):
    """A linear-like base layer plus a trainable low-rank path (see the module docstring)."""

    def __init__(
        self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0, init: str = "kaiming"
    ) -> None:
        super().__init__()
        device, dtype = float_placement(base)
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling
        self.merged = False
        LORA_INITS.get(init)(self.lora_A.weight, r)
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """scaling · B A, the update to the base weight: (out, in)."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (out, in)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., out)
        if self.merged:
            return y
        h = self.lora_dropout(x.to(self.lora_A.weight.dtype))  # (..., in)
        return y + (self.lora_B(self.lora_A(h)) * self.scaling).to(y.dtype)  # (..., out)

    def _base_weight(self) -> Tensor:
        if not isinstance(self.base_layer, nn.Linear):
            raise ConfigError(
                f"cannot merge LoRA into a {type(self.base_layer).__name__} base: merging needs "
                "a plain nn.Linear weight (dequantize the base first, or keep LoRA unmerged)"
            )
        return self.base_layer.weight

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self._base_weight()
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self._base_weight()
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.lora_A.out_features}, scaling={self.scaling:g}, merged={self.merged}"


@register
class Lora(DeltaMethod):
    """LoRA on the target linear layers; everything else frozen."""

    name = "lora"
    family = "reparameterization"
    mergeable = True
    Config = LoraConfig

    def __init__(self, config: LoraConfig | None = None) -> None:
        super().__init__(config)
        self.wrapped: list[str] = []  # full module names wrapped by apply()

    def inject(self, model: nn.Module) -> nn.Module:
        present = [n for n, m in model.named_modules() if isinstance(m, LoraLinear)]
        if present:
            raise ConfigError(
                f"this model already carries LoRA layers ({present[0]}, ...); apply LoRA to a "
                "fresh base model, or merge_and_unload() the first adapter before adding another"
            )
        c = self.config
        self.wrapped = match_targets(model, c.targets)
        freeze(model)
        for name in self.wrapped:
            base = model.get_submodule(name)
            replace_module(model, name, LoraLinear(base, c.r, c.scaling, c.dropout, c.init))
        self.model = model
        self.merged = False
        return model

    def layers(self) -> dict[str, LoraLinear]:
        """The LoRA wrappers by module name."""
        if self.model is None:
            raise ConfigError("lora: call apply(model) first")
        return {n: self.model.get_submodule(n) for n in self.wrapped}

    def merge(self) -> None:
        for layer in self.layers().values():
            layer.merge()
        self.merged = True

    def unmerge(self) -> None:
        for layer in self.layers().values():
            layer.unmerge()
        self.merged = False

    def merge_and_unload(self) -> nn.Module:
        """Fold the update into the base weights and put the plain layers back.

        The model then runs at base-model speed and carries no LoRA parameters; this method
        object is spent (its `wrapped` list is cleared). The base layers stay frozen."""
        for name, layer in self.layers().items():
            layer.merge()
            replace_module(self.model, name, layer.base_layer)
        self.wrapped = []
        self.merged = True
        return self.model
