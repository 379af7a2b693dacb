"""GRPO: group-relative policy optimisation with verifiable rewards (Shao et al., 2024).

No value model: k replies are sampled for each prompt, and each reply's advantage is its
reward measured against its own group, the same for every one of its tokens:

    A_i = (r_i − mean(r_group)) / (std(r_group) + 1e-4)        std unbiased, as trl's

The policy then takes clipped importance-weighted steps with a per-token KL penalty to the
reference, estimated by k3 = e^{log π_ref − log π} − (log π_ref − log π) − 1 ≥ 0 (Schulman):

    ρ_t = π(y_t) / π_old(y_t)
    ℓ_t = −min(ρ_t A, clip(ρ_t, 1−ε, 1+ε) A) + β ρ_t k3_t

The ρ_t on the KL term (DeepSeek-V3.2; trl's default) is 1 in value on-policy but not in
gradient: it makes the KL gradient the unbiased reverse-KL gradient; `unbiased_kl: false`
drops it (the original GRPO).

    loss  grpo     mean over replies of the mean over their tokens
          bnpo     mean over every token of the batch
          dr_grpo  sum over tokens / (replies × max_new_tokens)     (Liu et al., 2025)

π_old is the policy that sampled the rollout (its log-probabilities are taken once, when the
rollout is prepared; with one update per rollout π_old = π and ρ = 1). Rewards come from a
judge — for verifiable tasks a rule such as `first-number` against the exact answer.
Logged: reward, KL (mean k3), the clipped share of tokens and the reply length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.align.logprobs import Reference, scored_rows, token_logprobs
from lmforge.data.loader import Batch
from lmforge.errors import ConfigError
from lmforge.registry import Registry

Aggregate = Callable[[Tensor, Tensor, int], Tensor]  # (per-token loss, mask, max_new) → scalar
GRPO_LOSSES: Registry[Aggregate] = Registry("GRPO loss")


@GRPO_LOSSES.register("grpo")
def _per_reply(loss: Tensor, mask: Tensor, max_new: int) -> Tensor:
    return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


@GRPO_LOSSES.register("bnpo")
def _per_token(loss: Tensor, mask: Tensor, max_new: int) -> Tensor:
    return (loss * mask).sum() / mask.sum().clamp(min=1)


@GRPO_LOSSES.register("dr_grpo")
def _fixed_length(loss: Tensor, mask: Tensor, max_new: int) -> Tensor:
    return (loss * mask).sum() / (loss.shape[0] * max_new)


@dataclass
class GRPOSettings:
    beta: float = 0.04  # β: weight of the per-token KL penalty to the reference (0 = none)
    epsilon: float = 0.2  # ε: the ratio is clipped to [1−ε, 1+ε]
    loss: str = "grpo"  # grpo (per-reply mean) | bnpo (per-token mean) | dr_grpo
    scale_rewards: bool = True  # divide by the group's std (false: Dr. GRPO's centring only)
    unbiased_kl: bool = True  # weight the KL term by ρ_t: the unbiased reverse-KL gradient

    def validate(self) -> None:
        if self.beta < 0 or not self.epsilon > 0:
            raise ConfigError("grpo.beta must be >= 0 and grpo.epsilon positive")
        if self.loss not in GRPO_LOSSES:
            raise ConfigError(f"grpo.loss {self.loss!r} is unknown; choose {GRPO_LOSSES.names()}")


def group_advantages(rewards: Tensor, group: int, scale: bool = True) -> Tensor:
    """(N,) advantages of N = G·k rewards laid out group by group."""
    if rewards.numel() % group:
        raise ConfigError(f"{rewards.numel()} rewards do not split into groups of {group}")
    grouped = rewards.view(-1, group)  # (G, k)
    mean = grouped.mean(dim=1, keepdim=True)
    centred = grouped - mean
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(mean)
        centred = centred / (std + 1e-4)
    return centred.reshape(-1)


def k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token KL(π ‖ π_ref) estimate, ≥ 0: e^{Δ} − Δ − 1 with Δ = log π_ref − log π."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


def grpo_token_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    settings: GRPOSettings,
    ref_logps: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(per-token loss (B, T), clipped (B, T) bool) from per-token log-probabilities."""
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]  # (B, 1)
    eps = settings.epsilon
    clipped_ratio = ratio.clamp(1 - eps, 1 + eps)
    loss = -torch.min(ratio * a, clipped_ratio * a)
    if settings.beta and ref_logps is not None:
        kl = k3(logps, ref_logps) * (ratio if settings.unbiased_kl else 1.0)
        loss = loss + settings.beta * kl
    return loss, (ratio * a) > (clipped_ratio * a)


class GRPOObjective:
    """The GRPO loss on rollout minibatches; `prepare` adds advantages, π_old and π_ref."""

    def __init__(
        self,
        settings: GRPOSettings,
        group: int,
        reference: Reference | None,
        temperature: float = 1.0,
        max_new_tokens: int = 48,
        updates_per_rollout: int = 1,
    ) -> None:
        settings.validate()
        self.settings, self.group, self.reference = settings, group, reference
        self.temperature, self.max_new = temperature, max_new_tokens
        self.keep_old = updates_per_rollout > 1  # else π_old = π: ρ = 1, nothing to store
        self.step_metrics: dict[str, float] = {}

    def _logps(self, model: nn.Module, batch: Batch) -> Tensor:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        return token_logprobs(model, ids, mask, labels, self.temperature)

    def prepare(self, model: nn.Module, rollout: Batch) -> Batch:
        scale = self.settings.scale_rewards
        out = {**rollout, "advantages": group_advantages(rollout["rewards"], self.group, scale)}
        if self.keep_old:
            out["old_logps"] = self._logps(model, rollout)
        if self.settings.beta:
            if self.reference is None:
                raise ConfigError("grpo.beta > 0 needs the reference policy (a Reference)")
            with self.reference.active():
                out["ref_logps"] = self._logps(model, rollout)
        return out

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        logps = self._logps(model, batch)  # (B, T)
        mask = scored_rows(batch["labels"])[0].to(logps.dtype)
        old = batch.get("old_logps", logps.detach())
        ref = batch.get("ref_logps")
        loss, clipped = grpo_token_loss(logps, old, batch["advantages"], self.settings, ref)
        total = GRPO_LOSSES.get(self.settings.loss)(loss, mask, self.max_new)
        n = mask.sum().clamp(min=1)
        kl = (k3(logps.detach(), ref) * mask).sum() / n if ref is not None else torch.zeros(())
        self.step_metrics = {
            "reward": float(batch["rewards"].mean()),
            "kl": float(kl),
            "clipped": float((clipped * mask).sum() / n),
            "response_length": float(mask.sum(-1).mean()),
        }
        return total
