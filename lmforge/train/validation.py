"""Validation inside the loop: the default objective, and validation loss / perplexity.

    val_loss = mean over batches of objective(model, batch)       (model in eval mode, no grad)
    val_ppl  = exp(val_loss)

The mean is over batches, not tokens: with equal-size batches of unmasked tokens the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import islice

import torch
from torch import Tensor, nn

from lmforge.errors import DataError
from lmforge.model import loss_only
from lmforge.train.config import autocast
from lmforge.train.state import Batch, Objective


def default_objective(model: nn.Module, batch: Batch) -> Tensor:
    """The language-modelling loss the model computes from `labels` (only the loss: native
    models then skip building the full logits)."""
    with loss_only(model):
        loss = model(**batch).loss
    if loss is None:
        raise DataError("the batch has no 'labels', so the model returned no loss; add labels")
    return loss


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    batches: Iterable[Batch],
    objective: Objective = default_objective,
    *,
    max_batches: int = 0,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> tuple[float, float]:
    """(mean loss, perplexity = exp(mean loss)) over up to `max_batches` (0 = all) batches."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    try:
        for batch in islice(batches, max_batches or None):
            with autocast(precision, device):
                losses.append(float(objective(model, to_device(batch, device))))
    finally:
        model.train(was_training)
    if not losses:
        raise DataError("the validation data yielded no batches; pass a non-empty val_data")
    mean = sum(losses) / len(losses)
    return mean, math.exp(mean) if mean < 700 else math.inf
