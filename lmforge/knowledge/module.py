"""A knowledge module plugged into a frozen model: a K-Adapter-style parallel adapter
(Wang et al., 2021), registered as the delta method "knowledge".

K-Adapter keeps the pretrained model frozen and trains a separate stack beside it that
reads the model's intermediate hidden states; its output joins the model's final hidden
state, so the knowledge lives in a module that can be saved, swapped or combined with
others while the base never changes:

    x ─► layer a ─► … ─► layer b ─► … ─► layer c ─► final norm ─► (+) ─► head
           │ h_a           │ h_b           │ h_c                    ▲
           ▼               ▼               ▼                        │ s · up(z_c)
          z_a = σ(D_a ĥ_a) ─► z_b = z_a + σ(D_b ĥ_b + M_b z_a) ─► z_c = …     ĥ = rms_norm(h)

`up` starts at zero, so the model's output is unchanged at initialisation. The module is
position-wise (no attention of its own), so it works in KV-cached decoding unchanged.

Why this rather than retrieval-augmented cross-attention over retrieved chunk states:
cross-attention needs retrieval inside every forward call and new key/value inputs the
common calling convention does not carry; a parallel adapter keeps the convention, trains
on the documents with the ordinary next-token loss through the one training loop, and
saves, loads and composes through the delta contract like every other method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.peft import DeltaMethod, freeze, register


@dataclass
class KnowledgeModuleConfig:
    layers: list[int] = field(default_factory=list)  # layers read; [] = at 1/4, 1/2, 3/4, last
    width: int = 128  # width of the module's own hidden state z
    scaling: float = 1.0  # s in norm(x) + s · up(z)

    def validate(self) -> None:
        if self.width < 1:
            raise ConfigError(f"knowledge.width must be positive, got {self.width}")
        if any(i < 0 for i in self.layers):
            raise ConfigError(f"knowledge.layers must be layer indices >= 0, got {self.layers}")


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


class Tap(nn.Module):
    """A decoder layer that also leaves its output hidden state in the module's sink (a
    recomputation under gradient checkpointing overwrites the same entry)."""

    def __init__(self, base: nn.Module, sink: dict[int, Tensor], slot: int) -> None:
        super().__init__()
        self.base_layer, self.sink, self.slot = base, sink, slot

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        self.sink[self.slot] = _first(out)  # (B, T, d)
        return out


class KnowledgeStack(nn.Module):
    """z_1 = σ(D_1 ĥ_1), z_j = z_{j-1} + σ(D_j ĥ_j + M_j z_{j-1}), ĥ = rms_norm(h); out = up(z)."""

    def __init__(self, d: int, width: int, taps: int, like: Tensor) -> None:
        super().__init__()
        kw = {"device": like.device, "dtype": like.dtype}
        self.down = nn.ModuleList(nn.Linear(d, width, **kw) for _ in range(taps))
        self.mix = nn.ModuleList(nn.Linear(width, width, bias=False, **kw) for _ in range(taps - 1))
        self.act = nn.GELU()
        self.up = nn.Linear(width, d, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, states: list[Tensor]) -> Tensor:
        # the residual stream is unnormalised (norms in the hundreds in SmolLM2): read it
        # RMS-normalised, as the blocks do, or the first steps blow the logits up
        states = [F.rms_norm(h, h.shape[-1:]) for h in states]
        z = self.act(self.down[0](states[0]))  # (B, T, width)
        for down, mix, h in zip(self.down[1:], self.mix, states[1:]):
            z = z + self.act(down(h) + mix(z))
        return self.up(z)  # (B, T, d)


class KnowledgeNorm(nn.Module):
    """The final norm plus the module's contribution: norm(x) + s · stack(tapped states)."""

    def __init__(self, base: nn.Module, stack: KnowledgeStack, sink: dict, scaling: float):
        super().__init__()
        self.base_layer, self.knowledge, self.sink, self.scaling = base, stack, sink, scaling

    def forward(self, x: Tensor) -> Tensor:
        states = [self.sink[slot] for slot in sorted(self.sink)]  # lowest layer first
        return self.base_layer(x) + self.scaling * self.knowledge(states)


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    inner = getattr(model, "model", None)
    layers, norm = getattr(inner, "layers", None), getattr(inner, "norm", None)
    if not isinstance(layers, nn.ModuleList) or not isinstance(norm, nn.Module):
        raise ConfigError(
            f"{type(model).__name__} has no model.layers and model.norm (the Llama family's "
            "decoder); the knowledge module reads its layers"
        )
    return inner, layers


@register
class KnowledgeModule(DeltaMethod):
    """A K-Adapter-style stack beside the frozen model, added to its final hidden state."""

    name = "knowledge"
    family = "addition"
    mergeable = False
    Config = KnowledgeModuleConfig

    def inject(self, model: nn.Module) -> nn.Module:
        inner, layers = decoder_parts(model)
        if isinstance(inner.norm, KnowledgeNorm):
            raise ConfigError("this model already carries a knowledge module; use a fresh base")
        n = len(layers)
        chosen = sorted(set(self.config.layers or [n // 4, n // 2, 3 * n // 4, n - 1]))
        if chosen[-1] >= n:
            raise ConfigError(f"knowledge.layers {chosen} names a layer the {n}-layer model lacks")
        freeze(model)
        sink: dict[int, Tensor] = {}
        for i in chosen:
            layers[i] = Tap(layers[i], sink, i)
        weight = next(p for p in inner.norm.parameters())
        stack = KnowledgeStack(weight.shape[-1], self.config.width, len(chosen), weight)
        inner.norm = KnowledgeNorm(inner.norm, stack, sink, self.config.scaling)
        self.model = model
        return model
