"""Direct Preference Optimization (Rafailov et al., 2023) and its variants.

The RLHF objective max E[r] − β KL(π ‖ π_ref) has the closed-form optimum π* ∝ π_ref e^{r/β},
so the reward is implicit in the policy, r(x, y) = β log π(y|x)/π_ref(y|x) + const, and the
Bradley–Terry likelihood of a preference becomes a loss on the policy alone:

    Δ = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

    sigmoid   −(1−ε) log σ(βΔ) − ε log σ(−βΔ)        DPO; ε > 0: conservative DPO (cDPO)
    hinge     max(0, 1 − βΔ)                            SLiC (Zhao et al., 2023)
    ipo       (Δ/n − 1/(2β))²                           IPO (Azar et al., 2023); each side's
                                                        log-ratio averaged over its n tokens
    robust    [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1−2ε)   unbiased under ε label noise
                                                        (Chowdhury et al., 2024)

log π(y|x) sums the reply's token log-probabilities (align/logprobs.py). π_ref is computed
each step with the starting weights swapped in (`reference: live`), or once for every pair
before training (`reference: precomputed`, stored with the batches, after which no copy of
the starting weights is needed). Logged per step: the implicit rewards β·log-ratio of the
chosen and rejected replies, their margin, the accuracy (margin > 0), the mean log-ratio
(a KL estimate on the data) and the reply length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmforge.align.logprobs import Reference, scored_counts, sequence_logprobs
from lmforge.data.loader import Batch
from lmforge.data.preferences import EncodedPair, pair_batch
from lmforge.errors import ConfigError
from lmforge.registry import Registry

REFERENCES = ("live", "precomputed")


@dataclass
class DPOSettings:
    beta: float = 0.1  # β: strength of the implicit KL penalty (scale of the implicit reward)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge (SLiC) | robust
    label_smoothing: float = 0.0  # ε: share of pairs assumed flipped (sigmoid: cDPO; robust)
    reference: str = "live"  # live: π_ref each step, starting weights swapped in | precomputed

    def validate(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"dpo.beta must be positive, got {self.beta}")
        if self.loss not in DPO_LOSSES:
            raise ConfigError(
                f"dpo.loss {self.loss!r} is unknown; choose from {DPO_LOSSES.names()}"
            )
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(
                f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
            )
        if self.reference not in REFERENCES:
            raise ConfigError(f"dpo.reference must be one of {REFERENCES}, got {self.reference!r}")


@dataclass(frozen=True)
class LogRatios:
    """log π − log π_ref per pair, and the reply lengths (IPO averages over them)."""

    chosen: Tensor  # (B,)
    rejected: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,)
    rejected_tokens: Tensor  # (B,)

    @property
    def delta(self) -> Tensor:
        return self.chosen - self.rejected


PairLoss = Callable[[LogRatios, DPOSettings], Tensor]  # → loss per pair (B,)
DPO_LOSSES: Registry[PairLoss] = Registry("DPO loss")


@DPO_LOSSES.register("sigmoid")
def _sigmoid(r: LogRatios, s: DPOSettings) -> Tensor:
    eps, z = s.label_smoothing, s.beta * r.delta
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@DPO_LOSSES.register("hinge")
def _hinge(r: LogRatios, s: DPOSettings) -> Tensor:
    return torch.relu(1 - s.beta * r.delta)


@DPO_LOSSES.register("ipo")
def _ipo(r: LogRatios, s: DPOSettings) -> Tensor:
    per_token = r.chosen / r.chosen_tokens.clamp(min=1) - r.rejected / r.rejected_tokens.clamp(
        min=1
    )
    return (per_token - 1 / (2 * s.beta)) ** 2


@DPO_LOSSES.register("robust")
def _robust(r: LogRatios, s: DPOSettings) -> Tensor:
    eps, z = s.label_smoothing, s.beta * r.delta
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def dpo_loss(
    policy: Tensor, reference: Tensor, tokens: Tensor, settings: DPOSettings
) -> tuple[Tensor, LogRatios]:
    """Per-pair losses (B,) from sequence log-probabilities of 2B rows, chosen first:
    policy (2B,), reference (2B,), scored tokens per row (2B,)."""
    chosen, rejected = (policy - reference).chunk(2)
    n_chosen, n_rejected = tokens.to(policy.dtype).chunk(2)
    ratios = LogRatios(chosen, rejected, n_chosen, n_rejected)
    return DPO_LOSSES.get(settings.loss)(ratios, settings), ratios


class DPOObjective:
    """(model, batch of 2B rows) → mean DPO loss; π_ref from the batch's `ref_logps` or, live,
    from `reference` (the starting weights swapped in)."""

    def __init__(self, settings: DPOSettings, reference: Reference | None = None) -> None:
        settings.validate()
        self.settings, self.reference = settings, reference
        self.step_metrics: dict[str, float] = {}

    def reference_logps(self, model: nn.Module, batch: Batch) -> Tensor:
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.reference is None:
            raise ConfigError(
                "DPO needs π_ref: give the objective a Reference or precompute ref_logps"
            )
        with self.reference.active():
            return sequence_logprobs(model, batch)

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        reference = self.reference_logps(model, batch)
        policy = sequence_logprobs(model, batch)  # (2B,)
        losses, r = dpo_loss(policy, reference, scored_counts(batch["labels"]), self.settings)
        beta = self.settings.beta
        chosen, rejected = (beta * r.chosen).detach(), (beta * r.rejected).detach()
        self.step_metrics = {
            "reward_chosen": float(chosen.mean()),
            "reward_rejected": float(rejected.mean()),
            "margin": float((chosen - rejected).mean()),
            "accuracy": float((chosen > rejected).float().mean()),
            "kl": float(torch.cat([r.chosen, r.rejected]).detach().mean()),
            "response_length": float(torch.cat([r.chosen_tokens, r.rejected_tokens]).mean()),
        }
        return losses.mean()


@torch.no_grad()
def precompute_reference(
    model: nn.Module,
    pairs: Sequence[EncodedPair],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
) -> Tensor:
    """log π_ref of both replies of every pair under `model` as it is now: (N, 2) float32."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in tqdm(range(0, len(pairs), batch_size), desc="reference", disable=not progress):
            batch = pair_batch(pairs[i : i + batch_size], pad_id)
            logps = sequence_logprobs(model, {k: v.to(device) for k, v in batch.items()})
            out.append(torch.stack(logps.float().cpu().chunk(2), dim=1))  # (b, 2)
    finally:
        model.train(was_training)
    return torch.cat(out)
