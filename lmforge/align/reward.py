"""Reward models: a scalar head on any causal LM, trained on preference pairs.

InstructGPT's reward model reads a prompt and a reply and returns one number. Here it is the
policy's own architecture with a linear head on the final hidden state of the reply's last
token (its end-of-turn), native or transformers, fully trained or through any delta method:

    prompt + reply ─► LM body ─► h_last (d) ─► score: w·h_last ─► r(x, y)

Trained with the Bradley–Terry model of a preference, P(y_w ≻ y_l | x) = σ(r_w − r_l):

    loss = −log σ(r_w − r_l − m) + c · mean((r_w + r_l)²)

with an optional per-pair margin m (how much better the chosen reply is) and centering
coefficient c (Eisenstein et al., 2023: keeps rewards near zero, as trl's
center_rewards_coefficient). Logged per step: the mean chosen and rejected rewards, their
margin and the pairwise accuracy (r_w > r_l), which is also measured on held-out pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.align.logprobs import final_hidden, scored_counts
from lmforge.data.loader import Batch
from lmforge.errors import ConfigError
from lmforge.model.host import float_placement, host_for


@dataclass
class RewardSettings:
    center: float = 0.0  # c: weight of mean((r_w + r_l)²), keeps rewards centred (0 = off)
    head_seed: int = 0  # seed of the score head's initial weights

    def validate(self) -> None:
        if self.center < 0:
            raise ConfigError(f"reward.center must be >= 0, got {self.center}")


def last_positions(attention_mask: Tensor | None, input_ids: Tensor) -> Tensor:
    """Index of each row's last real token (B,), wherever the padding is."""
    if attention_mask is None:
        return torch.full((len(input_ids),), input_ids.shape[1] - 1, device=input_ids.device)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (columns + 1)).argmax(-1)


class RewardModel(nn.Module):
    """A causal LM (`base_model`, any delta applied) with a scalar `score` head: (B,) rewards."""

    def __init__(self, base_model: nn.Module, score: nn.Linear | None = None, seed: int = 0):
        super().__init__()
        self.base_model = base_model
        if score is None:
            device, dtype = float_placement(base_model)
            width = host_for(base_model).geometry().width
            score = nn.Linear(width, 1, bias=False, device=device, dtype=dtype)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():  # transformers' sequence-classification init: N(0, 0.02²)
                score.weight.copy_(torch.randn(score.weight.shape, generator=g) * 0.02)
        self.score = score

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden, _ = final_hidden(self.base_model, input_ids, attention_mask)  # (B, T, d)
        rows = torch.arange(len(hidden), device=hidden.device)
        pooled = hidden[rows, last_positions(attention_mask, input_ids)]  # (B, d)
        return self.score(pooled.to(self.score.weight.dtype)).squeeze(-1).float()  # (B,)


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, center: float = 0.0
) -> Tensor:
    """−mean log σ(r_w − r_l − m) + c · mean((r_w + r_l)²) over pairs: chosen, rejected (B,)."""
    gap = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -F.logsigmoid(gap).mean()
    if center:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss


class RewardObjective:
    """(reward model, batch of 2B rows, chosen first) → Bradley–Terry loss."""

    def __init__(self, settings: RewardSettings | None = None) -> None:
        self.settings = settings or RewardSettings()
        self.settings.validate()
        self.step_metrics: dict[str, float] = {}

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        rewards = model(batch["input_ids"], batch.get("attention_mask"))  # (2B,)
        chosen, rejected = rewards.chunk(2)
        loss = bradley_terry_loss(chosen, rejected, batch.get("margin"), self.settings.center)
        c, r = chosen.detach(), rejected.detach()
        self.step_metrics = {
            "reward_chosen": float(c.mean()),
            "reward_rejected": float(r.mean()),
            "margin": float((c - r).mean()),
            "accuracy": float((c > r).float().mean()),
            "response_length": float(scored_counts(batch["labels"]).float().mean()),
        }
        return loss


@torch.no_grad()
def pairwise_accuracy(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """Share of pairs whose chosen reply scores higher, and the mean margin, over `batches`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wins, gaps = [], []
    try:
        for batch in batches:
            rewards = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            chosen, rejected = rewards.chunk(2)
            wins.append(chosen > rejected)
            gaps.append(chosen - rejected)
    finally:
        model.train(was_training)
    if not wins:
        raise ConfigError("no held-out pairs to measure the reward model on; set data.holdout")
    return {
        "accuracy": float(torch.cat(wins).float().mean()),
        "margin": float(torch.cat(gaps).mean()),
        "pairs": len(torch.cat(wins)),
    }
