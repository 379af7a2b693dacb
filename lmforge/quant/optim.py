"""Memory-saving AdamW optimizers, selected by name: adamw | adamw8bit | paged_adamw.

Papers
    Adam: Kingma & Ba 2015 (arXiv:1412.6980); AdamW: Loshchilov & Hutter 2019 (arXiv:1711.05101)
    8-bit Optimizers via Block-wise Quantization: Dettmers, Lewis, Shleifer, Zettlemoyer 2022
        (arXiv:2110.02861); dynamic tree quantization: Dettmers 2016 (arXiv:1511.04561)
    Paged optimizers: QLoRA, Dettmers, Pagnoni, Holtzman, Zettlemoyer 2023 (arXiv:2305.14314)

The update, per element, at step t with gradient g (all three optimizers; adamw.py):

    θ ← θ·(1 − ηλ)                                  decoupled weight decay
    m ← β1·m + (1 − β1)·g                           first moment
    v ← β2·v + (1 − β2)·g²                          second moment
    θ ← θ − η/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)  bias-corrected step

They differ only in where m and v live between steps:

    adamw        torch.optim.AdamW: fp32 tensors, 8 bytes per parameter
    adamw8bit    uint8 codes of a dynamic map + an fp32 absmax per block of 256
                 (optim8bit.py): ≈ 2.03 bytes per parameter, 0.254× of adamw
                     m ≈ absmax_b · signed_map[code],  v ≈ absmax_b · unsigned_map[code]
    paged_adamw  fp32 pages, at most max_resident_bytes in RAM, the rest in a page file
                 (paged.py, pages.py); updates bit-identical to adamw

        parameter --step--> resident pages (LRU, RAM) <--page in--  page file (mmap,
                            [m_a|v_a|m_b|v_b ...]     ---evict--->  in page_dir)

All three are torch.optim.Optimizer subclasses with torch.optim.AdamW's constructor
(params, lr, betas, eps, weight_decay) plus keyword options of their own, and state_dicts of
plain tensors (safetensors-storable, so the training loop checkpoints them unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.quant.adamw import AdamWBase, Params, adamw_update_
from lmforge.quant.optim8bit import (
    AdamW8bit,
    dequantize_blockwise,
    dynamic_tree_map,
    quantize_blockwise,
)
from lmforge.quant.paged import PagedAdamW
from lmforge.quant.pages import PagingStats
from lmforge.registry import Registry

__all__ = [
    "OPTIMIZERS",
    "AdamW8bit",
    "AdamWBase",
    "PagedAdamW",
    "PagingStats",
    "adamw_update_",
    "build_optimizer",
    "dequantize_blockwise",
    "dynamic_tree_map",
    "quantize_blockwise",
    "state_bytes",
]

# name → optimizer class; every class takes (params, lr, betas, eps, weight_decay, **options).
OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adamw", torch.optim.AdamW)
OPTIMIZERS.add("adamw8bit", AdamW8bit)
OPTIMIZERS.add("paged_adamw", PagedAdamW)


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
