"""PPO-RLHF (Ouyang et al., 2022; Ziegler et al., 2019), with InstructGPT's PPO-ptx.

The policy carries a value head on its final hidden state (one forward gives log π and V).
A rollout is prepared once, without gradients, from the policy that sampled it (π_old):

    per-token reward   r_t = −β (log π_old(y_t) − log π_ref(y_t))  +  [t = last] · score
    GAE                δ_t = r_t + γ V(t+1) − V(t),   A_t = δ_t + γλ A_{t+1}   (0 past the end)
    returns            R_t = A_t + V(t);   A whitened over the rollout's reply tokens

where score is the judge's (or reward model's) score of the reply, optionally whitened over
the rollout. Each minibatch then takes the clipped PPO step (token means over the replies):

    ρ_t = π(y_t) / π_old(y_t)
    L_policy = mean max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε))
    L_value  = ½ mean max((V_t − R_t)², (V_old + clip(V_t − V_old, −ε_v, ε_v) − R_t)²)
    loss     = L_policy + c_v L_value + γ_ptx · L_LM(pretraining batch)          (PPO-ptx)

The pretraining term keeps the language-modelling loss on ordinary text in the objective,
InstructGPT's remedy for the alignment tax. Logged: score (reward), KL (summed per reply),
the clipped share, value loss, the pretraining loss and the reply length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.align.logprobs import Reference, final_hidden, logprobs_from_hidden, scored_rows
from lmforge.data.loader import Batch
from lmforge.errors import ConfigError
from lmforge.model.host import float_placement, host_for
from lmforge.train.validation import default_objective


@dataclass
class PPOSettings:
    kl_coef: float = 0.05  # β of the per-token KL penalty folded into the rewards
    gamma: float = 1.0  # discount γ over the reply's tokens
    lam: float = 0.95  # GAE λ: bias/variance of the advantage estimate
    clip: float = 0.2  # ε: the policy ratio is clipped to [1−ε, 1+ε]
    value_clip: float = 0.2  # ε_v: a new value moves at most this far from the old one
    value_coef: float = 0.1  # c_v: weight of the value loss
    whiten_rewards: bool = False  # normalise the scores over each rollout
    ptx_coef: float = 0.0  # γ_ptx: weight of the pretraining loss (PPO-ptx); needs data.ptx

    def validate(self) -> None:
        for name in ("kl_coef", "value_coef", "ptx_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError("ppo.gamma and ppo.lam must be in [0, 1]")
        if not (self.clip > 0 and self.value_clip > 0):
            raise ConfigError("ppo.clip and ppo.value_clip must be positive")


class PolicyWithValue(nn.Module):
    """A causal LM (`base_model`, any delta applied) plus a scalar value head."""

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model
        device, dtype = float_placement(base_model)
        width = host_for(base_model).geometry().width
        self.value = nn.Linear(width, 1, device=device, dtype=dtype)
        nn.init.zeros_(self.value.weight)  # V = 0 at the start, learnt from the returns
        nn.init.zeros_(self.value.bias)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def logps_and_values(self, batch: Batch, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """log π of the labelled tokens and the value of the state before each: (B, T) each,
        0 at unlabelled positions."""
        hidden, head = final_hidden(self.base_model, batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        logps = logprobs_from_hidden(hidden, head, labels, temperature)
        mask = scored_rows(labels)[0]
        before = F.pad(mask[:, 1:], (0, 1), value=False)
        values = self.value(hidden[before].to(self.value.weight.dtype)).squeeze(-1).float()
        return logps, torch.zeros_like(logps).masked_scatter(mask, values)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x − mean) / std over the masked entries (unbiased variance); 0 elsewhere."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def token_rewards(
    scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, kl_coef: float
) -> Tensor:
    """(B, T): −β·(log π_old − log π_ref) on every reply token, plus the score on the last."""
    rewards = -kl_coef * (logps - ref_logps) * mask
    columns = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * (columns + 1)).argmax(-1)  # (B,) each reply's last token
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over each row's reply: (advantages, returns), (B, T)."""
    mask = mask.to(rewards.dtype)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        following = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, Tensor]:
    """(clipped surrogate loss, share of tokens where the clipped term won)."""
    ratio = torch.exp(logps - old_logps)
    plain, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    return masked_mean(torch.max(plain, clipped), mask), masked_mean(
        (clipped > plain).float(), mask
    )


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> Tensor:
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


class PPOObjective:
    """The PPO(-ptx) loss on rollout minibatches of a PolicyWithValue; `prepare` adds π_old,
    V_old, π_ref, advantages and returns."""

    def __init__(
        self, settings: PPOSettings, reference: Reference, temperature: float = 1.0
    ) -> None:
        settings.validate()
        self.settings, self.reference, self.temperature = settings, reference, temperature
        self.step_metrics: dict[str, float] = {}

    def prepare(self, model: PolicyWithValue, rollout: Batch) -> Batch:
        s = self.settings
        mask = scored_rows(rollout["labels"])[0].float()
        logps, values = model.logps_and_values(rollout, self.temperature)
        with self.reference.active():
            ref_logps, _ = model.logps_and_values(rollout, self.temperature)
        scores = rollout["rewards"]
        if s.whiten_rewards:
            scores = masked_whiten(scores, torch.ones_like(scores), shift_mean=False)
        rewards = token_rewards(scores, logps, ref_logps, mask, s.kl_coef)
        advantages, returns = gae(rewards, values, mask, s.gamma, s.lam)
        return {
            **rollout,
            "old_logps": logps,
            "ref_logps": ref_logps,
            "old_values": values,
            "advantages": masked_whiten(advantages, mask),
            "returns": returns,
        }

    def __call__(self, model: PolicyWithValue, batch: Batch) -> Tensor:
        s = self.settings
        mask = scored_rows(batch["labels"])[0].float()
        logps, values = model.logps_and_values(batch, self.temperature)
        pg, clipped = policy_loss(logps, batch["old_logps"], batch["advantages"], mask, s.clip)
        vf = value_loss(values, batch["old_values"], batch["returns"], mask, s.value_clip)
        loss = pg + s.value_coef * vf
        kl = ((batch["old_logps"] - batch["ref_logps"]) * mask).sum(-1).mean()
        self.step_metrics = {
            "reward": float(batch["rewards"].mean()),
            "kl": float(kl),
            "clipped": float(clipped),
            "value_loss": float(vf.detach()),
            "response_length": float(mask.sum(-1).mean()),
        }
        if s.ptx_coef and "ptx_input_ids" in batch:
            ptx = {k[4:]: v for k, v in batch.items() if k.startswith("ptx_")}
            lm = default_objective(model.base_model, ptx)
            loss = loss + s.ptx_coef * lm
            self.step_metrics["ptx_loss"] = float(lm.detach())
        return loss
