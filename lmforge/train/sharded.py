"""Sharded checkpoints through torch.distributed.checkpoint: every rank writes its own pieces.

    run_dir/checkpoints/step-00000100/
      shard-00001-model-00001-of-00001.safetensors   rank 0's pieces ┐ of "<param name>",
      shard-00002-model-00001-of-00001.safetensors   rank 1's pieces ┘ "state.<name>.<key>", rng
      state.json      written last: as checkpoint.py's, plus the layout and the world size

Each file is safetensors; its header says where each piece lies in its whole tensor
(DCP_SHARDING_INFO offsets). An FSDP rank writes its slice of every tensor; a tensor every
rank holds whole (DDP's parameters, a step counter) is written once, by one rank.

The names are those of the single-process layout (checkpoint.py), whose two files the same
reader takes, so either layout loads into a model of any world size and any mode:
torch.distributed.checkpoint plans which stored pieces overlap the tensors (or the DTensor
slices) each rank holds and reads just those.

Writing: rank 0 makes the temporary directory, every rank writes its pieces into it and
fsyncs them, rank 0 adds state.json and renames the directory into place, and no rank goes on
before the rename. A rank that dies mid-write leaves only the temporary directory, which is
never read, so the previous checkpoint stays the latest complete one.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter

from lmforge.errors import CheckpointError
from lmforge.train.checkpoint import (
    STATE_FILE,
    begin_write,
    check_signature,
    checkpoint_dir,
    commit,
    load_checkpoint,
    new_state,
    prune_checkpoints,
    read_state,
    trainable_parameters,
    write_state,
)
from lmforge.train.distributed import Dist
from lmforge.train.snapshot import restore_optimizer, rng_state, split_optimizer

LAYOUT = "sharded"


def save_sharded(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra: dict[str, Any] | None,
    ctx: Dist,
    *,
    keep_last: int = 0,
) -> Path:
    """Every rank writes its pieces of the checkpoint of `step`; see the module docstring.
    Every rank must call it; it returns once the checkpoint is complete."""
    final = checkpoint_dir(run_dir, step)
    state = new_state(step, model, extra)
    tmp = Path(ctx.broadcast_text(str(begin_write(final)) if ctx.is_main else None))
    tensors = {name: p.detach() for name, p in trainable_parameters(model).items()}
    state["optimizer"] = None
    if optimizer is not None:
        opt_tensors, state["optimizer"] = split_optimizer(model, optimizer, Tensor.detach)
        tensors.update(opt_tensors)
    rng, state["rng"] = rng_state()
    tensors["rng.torch"] = rng["rng.torch"]  # the same on every rank: seeded alike, drawn alike
    try:
        writer = HuggingFaceStorageWriter(str(tmp), save_distributed=True)
        with _one_process_quietly():
            dcp.save(tensors, storage_writer=writer, no_dist=not _grouped())
        if ctx.is_main:
            write_state(tmp, {**state, "layout": LAYOUT, "world_size": ctx.world})
            commit(tmp, final)
    except BaseException:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    ctx.barrier()  # nobody goes on (or exits) before the checkpoint is in place
    if ctx.is_main:
        prune_checkpoints(run_dir, keep_last)
    return final


def load_any(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    sharded_run: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint of either layout into `model` (and `optimizer`), whole or sharded.

    A plain run reading a single-process checkpoint takes checkpoint.load_checkpoint; every
    other combination goes through torch.distributed.checkpoint (collective: in a sharded
    run every rank calls it). Returns what load_checkpoint returns.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = read_state(path)
    if state.get("layout") != LAYOUT and not sharded_run:
        return load_checkpoint(path, model, optimizer)
    check_signature(state["signature"], model, path)
    if optimizer is not None and state.get("optimizer") is None:
        raise CheckpointError(f"{path} was saved without optimizer state; load weights only")
    reader = HuggingFaceStorageReader(str(path))
    try:
        stored = reader.read_metadata().state_dict_metadata
    except Exception as e:  # safetensors raises its own error types for a torn header
        raise CheckpointError(f"{path} holds a corrupt or unreadable file ({e})") from e
    params = {name: p.detach() for name, p in trainable_parameters(model).items()}
    missing = [name for name in [*params, "rng.torch"] if name not in stored]
    if missing:
        raise CheckpointError(f"{path} lacks tensor {missing[0]!r}; the checkpoint is incomplete")
    moments = {}
    if optimizer is not None:
        moments = {k: _like(k, stored[k], params) for k in stored if k.startswith("state.")}
    rng = {"rng.torch": torch.empty(stored["rng.torch"].size, dtype=torch.uint8)}
    try:
        with _one_process_quietly():
            dcp.load({**params, **moments, **rng}, storage_reader=reader, no_dist=not _grouped())
    except Exception as e:
        raise CheckpointError(f"{path} could not be read ({e})") from e
    if optimizer is not None:
        restore_optimizer(optimizer, model, moments, state["optimizer"], path / STATE_FILE)
    return {
        "step": int(state["step"]),
        "extra": state.get("extra", {}),
        "rng": {**state["rng"], "torch": rng["rng.torch"], "cuda": []},
        "signature": state["signature"],
    }


def _like(key: str, meta: Any, params: dict[str, Tensor]) -> Tensor:
    """An empty tensor to read the stored optimizer tensor `key` into: sliced like its
    parameter where the parameter is sliced (FSDP) and the shapes agree, else whole."""
    name = key[len("state.") :].rsplit(".", 1)[0]
    param = params.get(name)
    if param is not None and hasattr(param, "device_mesh") and param.shape == meta.size:
        return torch.empty_like(param, dtype=meta.properties.dtype)
    device = param.device if param is not None else "cpu"
    return torch.empty(meta.size, dtype=meta.properties.dtype, device=device)


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def _one_process_quietly() -> Iterator[None]:
    """torch.distributed.checkpoint warns that it assumes one process even when told so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield
