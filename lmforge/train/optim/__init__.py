"""The optimizers, selected by name (train.optimizer): adamw | adamw8bit | paged_adamw.

All three apply the same AdamW update at step t with gradient g (adamw.py):

    θ ← θ·(1 − ηλ);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
    θ ← θ − η/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)

and differ only in where m and v live between steps:

    adamw        torch.optim.AdamW: fp32 tensors, 8 bytes per parameter
    adamw8bit    uint8 dynamic-map codes + one fp32 absmax per block of 256 (adamw8bit.py):
                 ≈ 2.03 bytes per parameter, 0.254× of adamw
    paged_adamw  fp32 pages, at most max_resident_bytes in RAM, the rest in a page file
                 (paged.py, page_store.py); updates bit-identical to adamw

Each takes torch.optim.AdamW's constructor (params, lr, betas, eps, weight_decay) plus keyword
options of its own, and has a state_dict of plain tensors (safetensors-storable).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.registry import Registry
from lmforge.train.optim.adamw import AdamWBase, Params, adamw_update_
from lmforge.train.optim.adamw8bit import AdamW8bit
from lmforge.train.optim.page_store import PagingStats
from lmforge.train.optim.paged import PagedAdamW

__all__ = [
    "OPTIMIZERS",
    "AdamW8bit",
    "AdamWBase",
    "PagedAdamW",
    "PagingStats",
    "adamw_update_",
    "build_optimizer",
    "param_groups",
    "state_bytes",
]

# name → optimizer class; every class takes (params, lr, betas, eps, weight_decay, **options).
OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adamw", torch.optim.AdamW)
OPTIMIZERS.add("adamw8bit", AdamW8bit)
OPTIMIZERS.add("paged_adamw", PagedAdamW)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: weight decay on matrices, none on norms and
    biases (dim < 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            "the model has no trainable parameters (requires_grad is False everywhere); "
            "unfreeze some or apply a delta-tuning method before training"
        )
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": group, "weight_decay": wd}
        for group, wd in ((decay, weight_decay), (no_decay, 0.0))
        if group
    ]


def build_optimizer(name: str, params: Params, **kwargs: Any) -> torch.optim.Optimizer:
    """The optimizer registered as `name` over `params`; kwargs go to its constructor.

    An unknown name raises ConfigError listing the registered ones.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS.names())} "
            "(train.optimizer)"
        )
    try:
        return OPTIMIZERS.get(name)(params, **kwargs)
    except TypeError as e:  # an option the chosen optimizer does not take
        raise ConfigError(f"optimizer {name!r}: {e}") from e


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's state: its own `state_bytes()`, else every state tensor."""
    own = getattr(optimizer, "state_bytes", None)
    if callable(own):
        return int(own())
    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )
