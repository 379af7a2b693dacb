"""Model growth: train a shallow (or narrow) model, then grow it and train on.

Depth (progressive stacking, Gong et al. 2019): the grown stack's layer i copies layer
source[i] of the trained one; DEPTH_MAPS says which:

    stack       L → L': layers 0..L−1, then copies of 0, 1, …   (2L: the whole stack again)
    interleave  L → L': layer ⌊i·L/L'⌋                         (2L: 0 0 1 1 2 2 …)

Function-preserving (grow.function_preserving): each new copy starts with its output
projections (o_proj, down_proj) at zero, so it adds nothing to the residual stream — the
grown model computes the same logits and the loss does not jump — while its other weights
are the source's, so it becomes a useful block as soon as those projections move.

Width (bert2BERT's function-preserving initialisation, Chen et al. 2022): doubling d_model
duplicates every residual dimension, attention head and SwiGLU unit, and splits each weight
that reads a duplicated input between the two copies with random shares r and 1 − r:

    x' = [x, x]      W' = [[W∘R₁, W∘(1−R₁)], [W∘R₂, W∘(1−R₂)]]      W'x' = [Wx, Wx]

RMSNorm sees the same mean square (gains duplicated; the final one halved, because the tied
head reads both copies), so the logits are unchanged; the random shares break the symmetry
between the copies, which would otherwise stay equal forever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, ModelConfig
from lmforge.registry import Registry

DepthMap = Callable[[int, int], list[int]]  # (old depth, new depth) → source layer of each
DEPTH_MAPS: Registry[DepthMap] = Registry("depth growth")
DEPTH_MAPS.add("stack", lambda old, new: [i % old for i in range(new)])
DEPTH_MAPS.add("interleave", lambda old, new: [i * old // new for i in range(new)])
ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # a new block's outputs
OPTIMIZER_CHOICES = ("reset", "carry")


@dataclass
class GrowthConfig:
    layers: list[int] = field(default_factory=list)  # depth of each stage before the last
    widths: list[int] = field(default_factory=list)  # d_model of each (each double the one before)
    at: list[int] = field(default_factory=list)  # the update at which each of those stages ends
    method: str = "stack"  # new layers: stack (copy the stack on top) | interleave (copy after)
    function_preserving: bool = True  # new layers start as identity blocks: the loss holds
    optimizer: str = "reset"  # AdamW moments at growth: reset | carry (copies take the source's)

    def validate(self) -> None:
        if len(self.layers) != len(self.at) or (self.widths and len(self.widths) != len(self.at)):
            raise ConfigError(
                "grow.layers, grow.at (and grow.widths, if given) need one entry per stage "
                f"before the last; got {len(self.layers)}, {len(self.at)}, {len(self.widths)}"
            )
        if any(b <= a for a, b in zip(self.at, self.at[1:])) or any(s < 1 for s in self.at):
            raise ConfigError(f"grow.at must rise from 1 up, got {self.at}")
        if self.method not in DEPTH_MAPS:
            raise ConfigError(f"grow.method {self.method!r}: choose from {DEPTH_MAPS.names()}")
        if self.optimizer not in OPTIMIZER_CHOICES:
            raise ConfigError(f"grow.optimizer {self.optimizer!r}: use reset or carry")
        if self.optimizer == "carry" and self.widths:
            raise ConfigError(
                "grow.optimizer=carry copies the moments of copied layers; width growth "
                "splits weights, whose moments have no copy",
                fix="use {grow.optimizer=reset} with {grow.widths}",
            )

    @property
    def enabled(self) -> bool:
        return bool(self.at)


def stage_shapes(final: ModelConfig, growth: GrowthConfig, max_steps: int) -> list[ModelConfig]:
    """The model shape of every stage, the last being `final`."""
    if growth.at and growth.at[-1] >= max_steps:
        raise ConfigError(f"grow.at {growth.at} must end before train.max_steps ({max_steps})")
    shapes = []
    widths = growth.widths or [final.d_model] * len(growth.layers)
    for depth, width in zip(growth.layers, widths):
        factor = final.d_model // width
        if width * factor != final.d_model or factor & (factor - 1):
            raise ConfigError(
                f"grow.widths: {width} must be model.d_model ({final.d_model}) halved n times"
            )
        if final.n_kv_head % factor:
            raise ConfigError(
                f"grow.widths: {width} would leave {final.n_kv_head}/{factor} key-value heads"
            )
        shapes.append(
            final.replace(
                n_layer=depth,
                d_model=width,
                n_head=final.n_head // factor,
                n_kv_head=final.n_kv_head // factor,
                d_ff=final.d_ff // factor,
            )
        )
    shapes.append(final)
    for a, b in zip(shapes, shapes[1:]):
        if b.n_layer < a.n_layer or b.d_model not in (a.d_model, 2 * a.d_model):
            raise ConfigError(
                f"grow: a stage of {a.n_layer}×{a.d_model} cannot grow into {b.n_layer}×"
                f"{b.d_model}; depth may only rise and width only double"
            )
    return shapes


def grow_depth(
    model: CausalLM, n_layer: int, method: str = "stack", preserve: bool = True
) -> tuple[CausalLM, dict[str, str]]:
    """A deeper copy of `model`, and for each copied parameter its source's name."""
    old = model.config.n_layer
    source = DEPTH_MAPS.get(method)(old, n_layer)
    grown = CausalLM(model.config.replace(n_layer=n_layer)).to(model.lm_head.weight.device)
    state, sources, seen = model.state_dict(), {}, set()
    new_state = {}
    for name in grown.state_dict():
        if not name.startswith("model.layers."):
            new_state[name], sources[name] = state[name], name
            continue
        index, rest = name[len("model.layers.") :].split(".", 1)
        origin = f"model.layers.{source[int(index)]}.{rest}"
        is_copy = (source[int(index)], rest) in seen
        seen.add((source[int(index)], rest))
        if preserve and is_copy and rest.endswith(ZEROED):
            new_state[name] = torch.zeros_like(state[origin])
            continue
        new_state[name], sources[name] = state[origin], origin
    grown.load_state_dict(new_state)
    return grown, sources


def _split(weight: Tensor, dim: int, generator: torch.Generator) -> Tensor:
    """`weight` read by a duplicated input along `dim`: its two halves share each entry with
    random shares r and 1 − r."""
    r = 0.25 + 0.5 * torch.rand(weight.shape, generator=generator, dtype=torch.float64)
    r = r.to(weight.dtype).to(weight.device)
    return torch.cat([weight * r, weight * (1 - r)], dim=dim)


def _dup(t: Tensor, dim: int) -> Tensor:
    return torch.cat([t, t], dim=dim)


def _doubled(name: str, t: Tensor, generator: torch.Generator) -> Tensor:
    """One tensor of the doubled model (see the module docstring)."""
    if name == "model.norm.weight":
        return _dup(t / 2, 0)  # the tied head reads both copies of each dimension
    if t.dim() == 1:
        return _dup(t, 0)  # norm gains, q/k/v biases: per output, copied
    if name == "model.embed_tokens.weight" or name == "lm_head.weight":
        return _dup(t, 1)  # (V, d): every token's vector written twice
    return _dup(_split(t, 1, generator), 0)  # rows copied, the duplicated inputs shared


def double_width(model: CausalLM, seed: int = 0) -> CausalLM:
    """`model` twice as wide (d_model, heads, key-value heads, SwiGLU units), computing the
    same logits (head width unchanged, so RoPE and the attention scale are too)."""
    c = model.config
    wide = c.replace(
        d_model=2 * c.d_model, n_head=2 * c.n_head, n_kv_head=2 * c.n_kv_head, d_ff=2 * c.d_ff
    )
    grown = CausalLM(wide).to(model.lm_head.weight.device)
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    grown.load_state_dict({n: _doubled(n, state[n], generator) for n in grown.state_dict()})
    return grown


def grow(
    model: CausalLM, shape: ModelConfig, growth: GrowthConfig, seed: int = 0
) -> tuple[CausalLM, dict[str, str]]:
    """`model` grown to `shape` (depth, then width); the sources of copied parameters, for
    carrying their optimizer moments (none after width growth)."""
    grown, sources = model, {}
    if shape.n_layer != model.config.n_layer:
        grown, sources = grow_depth(model, shape.n_layer, growth.method, growth.function_preserving)
    if shape.d_model != model.config.d_model:
        grown, sources = double_width(grown, seed), {}
    return grown, sources
