"""Prefix-tuning (Li & Liang, 2021): trainable keys and values that every layer attends to.

Each layer l reads P extra key/value pairs ahead of the real ones, h = Attn(q, [Pₖˡ; K], [Pᵥˡ; V]),
which act like activations of P virtual tokens that no input produced. Optimising the
prefix directly is unstable, so during training it is reparameterised through an MLP:

    E (P, d) ─► Linear(d, hidden) ─► tanh ─► Linear(hidden, L·2·n_kv·hd) ─► prefix (P, L·2·n_kv·hd)
                                                                            │ per layer: k, v
                                                                            ▼ (B, n_kv, P, hd)
    input ids ─────────────────────────────────────────────► frozen model with a prefilled cache

and "folded away afterwards": `fold()` computes the prefix once and drops E and the MLP;
`save()` always writes the folded prefix (the live model keeps the MLP until fold()), in
the layout of peft's `prompt_embeddings` with prefix_projection=False. `projection=False`
trains the prefix directly (what a folded or peft-loaded prefix is).

Options (the paper's ablations):
  embedding_only  the prefix lives only at the input embeddings: the MLP outputs P input
                  embeddings (d wide) instead of per-layer keys and values — prompt tuning,
                  reparameterised. The paper finds it much weaker than the full prefix.
  placement       "prefix" (before the input) or "infix" ([x; INFIX; y]: between input and
                  target). Infix is an input-level placement (embedding_only): the virtual
                  tokens go before each row's first target token, the first label != -100
                  (after the whole row when it has no target). At generation there are no
                  labels and the whole prompt is the input, so the infix is appended after the
                  prompt and the continuation follows it. A layer-level infix would need
                  trainable activations in the middle of the sequence at every layer, which a
                  prefilled cache cannot express: ConfigError.

A prefix as long as the model's context or longer leaves no room for the input: ConfigError.
At initialisation the random prefix already changes the output (identity_at_init is False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.model.host import Geometry, float_placement
from lmforge.peft.base import register
from lmforge.peft.virtual import (
    InsertTokens,
    PrefixCache,
    PromptEncoder,
    VirtualTokenMethod,
    VirtualTokenModel,
    tanh_mlp,
)
from lmforge.registry import Registry

# Where input-level virtual tokens go: P -> (before the input, between input and target).
PLACEMENTS: Registry[Callable[[int], InsertTokens]] = Registry("prefix placement")
PLACEMENTS.add("prefix", lambda P: InsertTokens(before=P, between=0))
PLACEMENTS.add("infix", lambda P: InsertTokens(before=0, between=P))


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 10  # P, prefix length
    projection: bool = True  # reparameterise through the MLP while training (False: direct)
    hidden: int = 512  # width of the MLP's hidden layer (the paper: 512 or 800)
    embedding_only: bool = False  # prefix only at the input embeddings (the paper's ablation)
    placement: str = "prefix"  # prefix | infix (between input and target; embedding_only)

    def validate(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(
                f"prefix.num_virtual_tokens must be positive, got {self.num_virtual_tokens}"
            )
        if self.hidden <= 0:
            raise ConfigError(f"prefix.hidden must be positive, got {self.hidden}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"prefix.placement {self.placement!r} is unknown; choose from {PLACEMENTS.names()}"
            )
        if self.placement == "infix" and not self.embedding_only:
            raise ConfigError(
                "prefix.placement='infix' needs embedding_only=true: per-layer keys and values "
                "are a cache ahead of the input and cannot sit between input and target"
            )


@register
class PrefixTuning(VirtualTokenMethod):
    """Per-layer key/value prefixes (or input embeddings), reparameterised by an MLP."""

    name = "prefix"
    Config = PrefixConfig
    FOLDED = {"projection": False}

    def build_wrapper(self, model: nn.Module, geometry: Geometry) -> VirtualTokenModel:
        c = self.config
        P, d = c.num_virtual_tokens, geometry.width
        width = d if c.embedding_only else geometry.kv_width
        device, dtype = float_placement(model.get_input_embeddings())
        with torch.device(device):
            if c.projection:
                encoder = PromptEncoder(torch.randn(P, d), tanh_mlp(d, c.hidden, width))
            else:
                encoder = PromptEncoder(torch.randn(P, width))
        encoder = encoder.to(dtype)
        insertion = PLACEMENTS.get(c.placement)(P) if c.embedding_only else PrefixCache(geometry, P)
        return VirtualTokenModel(model, encoder, insertion)
