"""Checkpoints: safetensors + JSON, written atomically, enough to resume a run bit for bit.

    run_dir/checkpoints/
      step-00000100/
        model.safetensors       trainable parameters only, tied weights stored once
        optimizer.safetensors   "state.<param>.<key>" optimizer tensors, "rng.torch", "rng.cuda.<i>"
        state.json              step, signature, optimizer scalars + groups, python/numpy RNG, extra
      .tmp-step-00000200-xyz/   a write in progress (or one a crash left behind): never read

A checkpoint is written into a temporary sibling directory, every file is fsynced, and the
directory is renamed into place (rename is atomic), so `latest_checkpoint` sees a complete
checkpoint or none. Older checkpoints are pruned only after the new one is complete.

Only parameters with `requires_grad` are saved: a frozen base comes from wherever it was built
(delta-tuning methods rely on this, and it keeps their checkpoints small). No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import fsync_dir
from lmforge.errors import CheckpointError, CheckpointWarning
from lmforge.train.snapshot import (
    cpu_tensor,
    restore_optimizer,
    rng_state,
    split_optimizer,
)

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------- naming and listing


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and half-written ones ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resume_candidates(run_dir: str | Path, resume_from: str) -> list[Path]:
    """The checkpoints to try, in order, for train.resume_from: `latest` (newest first; an
    unreadable one falls back to the one before), `step-N` (that one only) or `none`."""
    found = list_checkpoints(run_dir)
    if resume_from == "none":
        return []
    if resume_from == "latest":
        return found[::-1]
    chosen = Path(run_dir) / CHECKPOINTS / resume_from
    match = _STEP_DIR.match(resume_from)
    if match:
        chosen = checkpoint_dir(run_dir, int(match.group(1)))
    if chosen not in found:
        have = ", ".join(p.name for p in found) or "none"
        raise CheckpointError(
            f"train.resume_from={resume_from!r}: no such checkpoint in "
            f"{Path(run_dir) / CHECKPOINTS} (have: {have})",
            fix="use {resume_from=latest}, one of those, or none",
        )
    return [chosen]


def resume_from_checkpoint(
    run_dir: Path, resume_from: str, load: Callable[[Path], dict[str, Any]]
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint train.resume_from names, loaded by `load`; an unreadable newest one
    falls back to the one before it, with a warning naming both. None: start afresh."""
    candidates = resume_candidates(run_dir, resume_from)
    if resume_from == "none" and list_checkpoints(run_dir):
        raise CheckpointError(
            f"{run_dir} already holds checkpoints (newest: {list_checkpoints(run_dir)[-1].name}) "
            "and train.resume_from is none",
            fix="resume them with {resume_from=latest}, or start over in a new {run_dir}",
        )
    failed: list[tuple[Path, CheckpointError]] = []
    for ckpt in candidates:
        try:
            loaded = load(ckpt)
        except CheckpointError as e:
            if resume_from != "latest":
                raise
            failed.append((ckpt, e))
            continue
        if "data" not in loaded["extra"] or "loop" not in loaded["extra"]:
            raise CheckpointError(
                f"{ckpt} was not written by the training loop (no data position)",
                fix="move it out of the run directory, or start a new {run_dir}",
            )
        for bad, error in failed:
            warnings.warn(
                f"{bad} is unreadable ({error}); resuming from {ckpt} instead",
                CheckpointWarning,
                stacklevel=3,
            )
        return ckpt, loaded
    if failed:
        names = ", ".join(str(bad) for bad, _ in failed)
        raise CheckpointError(f"no checkpoint of {run_dir} is readable ({names})")
    return None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (0 keeps all) and stale temp dirs."""
    root = Path(run_dir) / CHECKPOINTS
    removed = [p for p in root.glob(_TMP_PREFIX + "*") if p.is_dir()]
    if keep_last > 0:
        removed += list_checkpoints(run_dir)[:-keep_last]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ---------------------------------------------------------------- model parameters


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """name → parameter for every trainable parameter; a tied tensor appears once (first name)."""
    # named_parameters() already drops the second name of a shared tensor.
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """Trainable parameter names and shapes: what a checkpoint must match to load."""
    return {name: list(p.shape) for name, p in trainable_parameters(model).items()}


def check_signature(saved: dict[str, list[int]], model: nn.Module, path: Path) -> None:
    current = model_signature(model)
    if saved == current:
        return
    for name in list(saved) + [n for n in current if n not in saved]:
        if name not in current:
            problem = (
                f"parameter {name!r} {saved[name]} is in the checkpoint "
                "but not a trainable parameter of the model"
            )
        elif name not in saved:
            problem = f"parameter {name!r} {current[name]} of the model is not in the checkpoint"
        elif saved[name] != current[name]:
            problem = (
                f"parameter {name!r} has shape {saved[name]} in the checkpoint "
                f"but {current[name]} in the model"
            )
        else:
            continue
        raise CheckpointError(
            f"{path} was saved from another model: {problem}; build the model with the "
            "config (and the same delta-tuning method) the checkpoint was trained with"
        )


# ---------------------------------------------------------------- save


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write(
    tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: dict
) -> None:
    """Fill the temporary directory; state.json goes last as the 'complete' marker."""
    rng_tensors, state["rng"] = rng_state()
    weights = {name: cpu_tensor(p) for name, p in trainable_parameters(model).items()}
    save_file(weights, str(tmp / MODEL_FILE))
    opt_tensors, state["optimizer"] = ({}, None)
    if optimizer is not None:
        opt_tensors, state["optimizer"] = split_optimizer(model, optimizer)
    save_file({**opt_tensors, **rng_tensors}, str(tmp / OPTIMIZER_FILE))
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        _fsync_file(tmp / name)
    write_state(tmp, state)


def write_state(tmp: Path, state: dict[str, Any]) -> None:
    """state.json, fsynced with its directory: the last file of a checkpoint."""
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    _fsync_file(tmp / STATE_FILE)
    fsync_dir(tmp)


def new_state(step: int, model: nn.Module, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON part of the checkpoint of `step` (`extra` must be JSON-able)."""
    state = {
        "format": FORMAT_VERSION,
        "step": step,
        "signature": model_signature(model),
        "extra": extra or {},
    }
    try:
        json.dumps(state["extra"])
    except TypeError as e:
        raise CheckpointError(f"checkpoint extra for step {step} is not JSON-able: {e}") from None
    return state


def begin_write(final: Path) -> Path:
    """A fresh temporary directory beside `final` for its files."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is as readable as the run
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Rename the complete temporary directory into place (atomic)."""
    if final.exists():  # saving a step again (a rerun from an earlier step)
        old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra: dict[str, Any] | None = None,
    *,
    keep_last: int = 0,
) -> Path:
    """Write the checkpoint of `step` atomically, then keep only the newest `keep_last` (0 = all).

    `extra` (JSON-able: data position, loop counters, ...) comes back from `load_checkpoint`.
    """
    final = checkpoint_dir(run_dir, step)
    state = new_state(step, model, extra)
    tmp = begin_write(final)
    try:
        _write(tmp, model, optimizer, state)
        commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last)
    return final


# ---------------------------------------------------------------- load


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated headers
        raise CheckpointError(f"{path} is corrupt or unreadable ({e})") from e


def read_state(path: Path) -> dict[str, Any]:
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing; {path} is not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is corrupt or unreadable ({e})") from None
    if not isinstance(state, dict) or "signature" not in state or "step" not in state:
        raise CheckpointError(f"{file} is not an lmforge checkpoint state (no step/signature)")
    return state


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load trainable weights (and optimizer state) from a checkpoint directory.

    Returns {"step", "extra", "rng", "signature"}; pass "rng" to `restore_rng` to resume
    the random streams exactly. The model's current RNG states are left alone here.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    state = read_state(path)  # every file is read and checked before anything is copied
    check_signature(state["signature"], model, path)
    weights = _read_tensors(path / MODEL_FILE)
    tensors = _read_tensors(path / OPTIMIZER_FILE)
    params = trainable_parameters(model)
    missing = [name for name in params if name not in weights]
    if missing:
        raise CheckpointError(f"{path / MODEL_FILE} lacks parameter {missing[0]!r}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise CheckpointError(f"{path} was saved without optimizer state; load weights only")
        restore_optimizer(optimizer, model, tensors, state["optimizer"], path / STATE_FILE)
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{path / OPTIMIZER_FILE} lacks the torch RNG state (rng.torch)")
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    rng = {**state["rng"], "torch": tensors["rng.torch"], "cuda": [tensors[k] for k in cuda]}
    return {
        "step": int(state["step"]),
        "extra": state.get("extra", {}),
        "rng": rng,
        "signature": state["signature"],
    }
