"""Per-thread scratch buffers, reused from call to call instead of freshly allocated.

NF4Linear rebuilds a weight-sized Ŵ for every product; freeing and re-allocating megabytes
per layer fragments the heap, so each thread keeps one buffer per name (and dtype, device,
inference mode: inference tensors cannot be written outside the mode) and writes into it.
A buffer can also record what it holds (`hold`), so that a later caller that would write
the very same values can take them as they are (`holds`).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_LOCAL = threading.local()


def _key(name: str, device: torch.device) -> tuple[str, torch.device, bool]:
    return name, torch.device(device), torch.is_inference_mode_enabled()


def scratch(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """This thread's reusable buffer `name` of at least `numel` elements, cut to `numel`."""
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    key = (*_key(name, device), dtype)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def hold(name: str, device: torch.device, holder: object) -> None:
    """Record that buffer `name` now holds what `holder` names (None: nothing reusable)."""
    _LOCAL.__dict__.setdefault("holders", {})[_key(name, device)] = holder


def holds(name: str, device: torch.device, holder: object) -> bool:
    """Whether the last write to buffer `name` recorded this (not None) `holder`."""
    held = _LOCAL.__dict__.get("holders", {}).get(_key(name, device))
    return holder is not None and held == holder
