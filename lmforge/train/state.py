"""The small types the training loop shares with its callers.

BatchSource   where training batches come from (lmforge/data/loader.py implements it)
Objective     (model, batch) → scalar loss tensor
TrainState    what callbacks receive after each step
TrainResult   what `train` returns
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.data.loader import Batch, BatchSource  # noqa: F401  (re-exported)

Objective = Callable[[nn.Module, Batch], Tensor]


@dataclass
class TrainState:
    """What callbacks see after each step (and may set `stop` on)."""

    step: int  # optimizer updates done
    max_steps: int  # updates the run is configured for
    loss: float = math.nan  # loss of the latest step (mean over its micro-batches)
    lr: float = 0.0  # learning rate the latest step used
    grad_norm: float = math.nan  # global gradient norm of the latest step, before clipping
    tokens_seen: int = 0  # tokens consumed since the run began (across resumes)
    elapsed: float = 0.0  # training seconds since the run began (across resumes)
    val_loss: float | None = None  # latest validation loss
    val_ppl: float | None = None  # latest validation perplexity
    checkpoint: Path | None = None  # latest complete checkpoint
    run_dir: Path | None = None
    model: nn.Module | None = field(default=None, repr=False)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    stop: bool = False  # a callback sets this to end the run after the current step


@dataclass
class TrainResult:
    step: int  # updates done when the run ended
    train_loss: float | None  # the last logged training loss
    val_loss: float | None  # the last validation loss (None without val_data)
    val_ppl: float | None  # exp(val_loss)
    tokens: int  # tokens consumed since the run began
    seconds: float  # wall time of this call
    tokens_per_s: float  # tokens this call consumed / seconds its steps took (no eval, saving)
    history: list[dict[str, Any]]  # every metrics.jsonl record of the run
    run_dir: Path
