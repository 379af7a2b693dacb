"""Bottleneck adapters, serial (Houlsby et al., 2019) and parallel (He et al., 2022).

An adapter is a small residual bottleneck, f(h) = W_up · σ(W_down · h + b_down) + b_up,
with W_up and b_up initialised to zero so that the adapted model starts as the base model.

Serial (Houlsby): the adapter reads the sublayer's output and is added back to it, before
the block's residual connection. It wraps the sublayer's last projection:

    x ─► sublayer ... ─► o_proj / down_proj ─► h ─┬──────────────► (+) ─► h + s·f(h)
                                                   └─► f (adapter) ─┘

Parallel (He et al.): the adapter reads the sublayer's INPUT and runs beside it,
h = sublayer(x) + s·f(x). It wraps the whole sublayer module (`self_attn` or `mlp`); the
wrapper takes the sublayer's first argument (or transformers' `hidden_states=` keyword) as
x and adds s·f(x) to the output (to its first element when the sublayer returns a tuple,
as transformers' attention does):

    x ─┬─► self_attn / mlp ─► (+) ─► sublayer(x) + s·f(x)
       └─► f (adapter) ─────────┘

Placements are "attention" and "ffn"; the modules they name (`self_attn.o_proj`,
`mlp.down_proj`, `self_attn`, `mlp`) exist under those names in both the native decoder and
transformers' Llama family. Adapter parameters are named `...<site>.adapter.down.weight`
etc., the wrapped module lives at `...<site>.base_layer`. Adapters add latency and are
not mergeable (the nonlinearity does not fold into a weight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import float_placement
from lmforge.model.targets import replace_module
from lmforge.peft.base import DeltaMethod, freeze, register
from lmforge.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("adapter activation")
ACTIVATIONS.add("gelu", nn.GELU)
ACTIVATIONS.add("relu", nn.ReLU)
ACTIVATIONS.add("silu", nn.SiLU)

PLACEMENTS = ("attention", "ffn")


class Bottleneck(nn.Module):
    """f(h) = up(σ(down(h))), with `up` zero so that f starts at 0."""

    def __init__(self, width: int, bottleneck: int, activation: str, base: nn.Module) -> None:
        super().__init__()
        device, dtype = float_placement(base)
        self.down = nn.Linear(width, bottleneck, device=device, dtype=dtype)
        self.act = ACTIVATIONS.get(activation)()
        self.up = nn.Linear(bottleneck, width, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(self.act(self.down(h)))  # (..., width) → (..., bottleneck) → (..., width)


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _with_first(out: Any, first: Tensor) -> Any:
    return (first, *out[1:]) if isinstance(out, tuple) else first


class AdapterWrapper(nn.Module):
    """A wrapped module plus one bottleneck adapter; subclasses say where the adapter reads."""

    def __init__(self, base: nn.Module, adapter: Bottleneck, scaling: float) -> None:
        super().__init__()
        self.base_layer = base
        self.adapter = adapter
        self.scaling = scaling


class SerialAdapter(AdapterWrapper):
    """h = base(...); h + s·f(h)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        h = _first(out)  # (B, T, d)
        return _with_first(out, h + self.scaling * self.adapter(h))


class ParallelAdapter(AdapterWrapper):
    """base(x, ...) + s·f(x), with x the wrapped module's input hidden states."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(x, Tensor):
            raise TypeError(
                f"parallel adapter around {type(self.base_layer).__name__}: expected the hidden "
                "states as the first argument or as hidden_states="
            )
        out = self.base_layer(*args, **kwargs)
        return _with_first(out, _first(out) + self.scaling * self.adapter(x))  # (B, T, d)


@dataclass
class Variant:
    """How one adapter variant is injected: which wrapper, around which module per placement."""

    wrapper: type[AdapterWrapper]
    sites: dict[str, str]  # placement → module name suffix


VARIANTS: Registry[Variant] = Registry("adapter variant")
VARIANTS.add(
    "serial", Variant(SerialAdapter, {"attention": "self_attn.o_proj", "ffn": "mlp.down_proj"})
)
VARIANTS.add("parallel", Variant(ParallelAdapter, {"attention": "self_attn", "ffn": "mlp"}))


@dataclass
class AdapterConfig:
    bottleneck: int = 64  # width of the bottleneck (rows of the down-projection)
    placement: list[str] = field(default_factory=lambda: list(PLACEMENTS))  # attention | ffn
    variant: str = "serial"  # serial (Houlsby 2019: after the sublayer) | parallel (He 2022)
    activation: str = "gelu"  # nonlinearity inside the bottleneck: gelu | relu | silu
    scaling: float = 1.0  # s in h + s·f(·)

    def validate(self) -> None:
        if self.bottleneck <= 0:
            raise ConfigError(f"adapter.bottleneck must be positive, got {self.bottleneck}")
        if not self.placement:
            raise ConfigError(f"adapter.placement is empty; choose from {list(PLACEMENTS)}")
        for p in self.placement:
            if p not in PLACEMENTS:
                raise ConfigError(f"adapter.placement {p!r} is unknown; choose from {PLACEMENTS}")
        if len(set(self.placement)) != len(self.placement):
            raise ConfigError(f"adapter.placement {self.placement} names a placement twice")
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"adapter.variant {self.variant!r} is unknown; choose from {VARIANTS.names()}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"adapter.activation {self.activation!r} is unknown; "
                f"choose from {ACTIVATIONS.names()}"
            )


def _hidden_size(model: nn.Module) -> int:
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embed is None:
        raise ConfigError(
            f"{type(model).__name__} has no get_input_embeddings(); adapters need the width "
            "of the residual stream"
        )
    return embed.embedding_dim


def _sites(model: nn.Module, suffix: str, placement: str, variant: str) -> list[str]:
    names = [n for n, _ in model.named_modules() if n == suffix or n.endswith("." + suffix)]
    if not names:
        known = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(
            f"adapter placement {placement!r} ({variant}) wraps modules named '*.{suffix}', "
            f"and this model has none; its module names end in: {', '.join(known)}"
        )
    return names


@register
class Adapter(DeltaMethod):
    """Bottleneck adapters after (serial) or beside (parallel) attention and FFN sublayers."""

    name = "adapter"
    family = "addition"
    mergeable = False
    Config = AdapterConfig

    def __init__(self, config: AdapterConfig | None = None) -> None:
        super().__init__(config)
        self.wrapped: list[str] = []  # full names of the modules wrapped by apply()

    def inject(self, model: nn.Module) -> nn.Module:
        present = [n for n, m in model.named_modules() if isinstance(m, AdapterWrapper)]
        if present:
            raise ConfigError(
                f"this model already carries adapters ({present[0]}, ...); apply adapters to "
                "a fresh base model"
            )
        c = self.config
        variant = VARIANTS.get(c.variant)
        width = _hidden_size(model)
        sites = [
            name
            for placement in c.placement
            for name in _sites(model, variant.sites[placement], placement, c.variant)
        ]
        freeze(model)
        for name in sites:
            base = model.get_submodule(name)
            adapter = Bottleneck(width, c.bottleneck, c.activation, base)
            replace_module(model, name, variant.wrapper(base, adapter, c.scaling))
        self.wrapped = sites
        self.model = model
        return model
