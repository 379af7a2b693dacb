"""What a checkpoint holds besides the weights, as safetensors-storable tensors plus JSON.

    optimizer   "state.<param name>.<key>" tensors (moments, step counters) + JSON for the
                scalars and the parameter groups (parameters named, not numbered)
    RNG         torch (and CUDA) generator states as uint8 tensors; python and numpy as JSON

Both checkpoint layouts (checkpoint.py: one process; sharded.py: every rank its pieces) store
exactly these names, so each reads the other's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.errors import CheckpointError


def cpu_tensor(t: Tensor) -> Tensor:
    """A detached CPU tensor that owns its storage (safetensors refuses views of shared memory)."""
    t = t.detach().to("cpu").contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


# ---------------------------------------------------------------- optimizer state


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order the optimizer's state_dict numbers its parameters."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise CheckpointError(
                    "the optimizer holds a parameter that is not part of the model; "
                    "build the optimizer over model.parameters() only"
                )
            names.append(by_id[id(p)])
    return names


def split_optimizer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    convert: Callable[[Tensor], Tensor] = cpu_tensor,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as ("state.<name>.<key>" tensors, each passed through `convert`; JSON
    for everything else)."""
    names = _optimizer_names(model, optimizer)
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        name = names[index]
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{name}.{key}"] = convert(value)
            else:
                scalars.setdefault(name, {})[key] = value
    groups = []
    for group in sd["param_groups"]:
        # A tensor hyperparameter (lr as a tensor, for capturable steps) is stored as its value.
        plain = {k: v.item() if isinstance(v, Tensor) else v for k, v in group.items()}
        groups.append({**plain, "params": [names[i] for i in group["params"]]})
    return tensors, {"state": scalars, "param_groups": groups}


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    tensors: dict[str, Tensor],
    saved: dict[str, Any],
    path: Path,
) -> None:
    names = _optimizer_names(model, optimizer)
    index = {name: i for i, name in enumerate(names)}
    saved_names = [n for g in saved["param_groups"] for n in g["params"]]
    if saved_names != names:
        raise CheckpointError(
            f"{path}: the optimizer was saved over other parameters or groups "
            f"({len(saved_names)} saved, {len(names)} now); build it the same way as the saved run"
        )
    state: dict[int, dict[str, Any]] = {}
    for name, entry in saved["state"].items():
        state.setdefault(index[name], {}).update(entry)
    for key, value in tensors.items():
        if key.startswith("state."):
            # The key is state.<param name>.<state key>; param names contain dots, state keys don't.
            name, field = key[len("state.") :].rsplit(".", 1)
            state.setdefault(index[name], {})[field] = value
    groups = []
    for group in saved["param_groups"]:
        restored = {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        groups.append({**restored, "params": [index[n] for n in group["params"]]})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------- random number generators


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch (and CUDA) states as uint8 tensors; python and numpy states as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states `load_checkpoint` returned under "rng"."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
