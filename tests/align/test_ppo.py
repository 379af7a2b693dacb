"""PPO: GAE, the KL-shaped rewards, whitening and the clipped policy and value losses against
hand-computed values; the value head reads the same forward as the log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.align.logprobs import Reference, token_logprobs
from lmforge.align.ppo import (
    PolicyWithValue,
    PPOObjective,
    PPOSettings,
    gae,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from lmforge.errors import ConfigError
from tests.align.helpers import make, nudge


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.1, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.0, 0.5, 0.2, 0.1, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1, 0]])  # the reply: positions 1..3, then padding
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    a3 = 1.0 - 0.1
    a2 = (0.0 + 0.9 * 0.1 - 0.2) + 0.72 * a3
    a1 = (0.1 + 0.9 * 0.2 - 0.5) + 0.72 * a2
    assert adv.tolist() == [pytest.approx([0.0, a1, a2, a3, 0.0], abs=1e-6)]
    assert ret.tolist() == [pytest.approx([0.0, a1 + 0.5, a2 + 0.2, a3 + 0.1, 0.0], abs=1e-6)]


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.2, -0.1, 0.7], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.3, 0.1, 0.4], [0.5, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    want = [[0.8 - 0.3, 0.6 - 0.1, 0.7 - 0.4], [1.0 - 0.5, 1.0 - 0.2, 0.0]]
    assert adv.tolist() == [pytest.approx(row, abs=1e-6) for row in want]


def test_token_rewards_fold_the_kl_in_and_the_score_on_the_last_token():
    logps = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    got = token_rewards(torch.tensor([3.0]), logps, ref, mask, kl_coef=0.1)
    assert got.tolist() == [pytest.approx([0.0, -0.05, 0.1 + 3.0, 0.0])]


def test_clipped_policy_and_value_losses_by_hand():
    logps = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is not scored
    pg, clipped = policy_loss(logps, old, adv, mask, clip=0.2)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped); token 2: max(1.0, 1.6) = 1.6 (clipped)
    assert float(pg) == pytest.approx((-1.2 + 1.6) / 2)
    assert float(clipped) == 1.0
    values = torch.tensor([[1.0, 0.0, 9.0]])
    old_values = torch.tensor([[0.5, 0.1, 0.0]])
    returns = torch.tensor([[0.6, 1.0, 0.0]])
    vf = value_loss(values, old_values, returns, mask, clip=0.2)
    # token 1: the clipped value is .5 + .2 = .7; token 2: .1 + clip(−.1) = 0, as unclipped
    first = max((1.0 - 0.6) ** 2, (0.7 - 0.6) ** 2)
    second = max((0.0 - 1.0) ** 2, ((0.1 - 0.1) - 1.0) ** 2)
    assert float(vf) == pytest.approx(0.5 * (first + second) / 2)


def test_whitening_over_the_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    got = masked_whiten(x, mask)
    assert got.tolist() == [pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)]  # std 1 (unbiased)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert kept.tolist() == [pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)]


def rollout(vocab: int = 61):
    ids = torch.tensor([[3, 4, 5, 6, 7, 0], [3, 8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "rewards": torch.tensor([1.0, -1.0]),
    }


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_value_head_shares_the_forward_and_prepare_fills_the_rollout(backend):
    lm = make(backend)
    model = PolicyWithValue(lm)
    batch = rollout()
    logps, values = model.logps_and_values(batch)
    assert torch.allclose(
        logps,
        token_logprobs(lm, batch["input_ids"], batch["attention_mask"], batch["labels"]),
        atol=1e-6,
    )
    assert float(values.abs().sum()) == 0.0  # a zero-initialised head
    objective = PPOObjective(PPOSettings(kl_coef=0.1), Reference(model))
    nudge(model)
    with torch.no_grad():
        prepared = objective.prepare(model, batch)
    scored = batch["labels"] != -100
    assert (prepared["ref_logps"][scored] != prepared["old_logps"][scored]).all()
    assert prepared["advantages"][~scored].abs().sum() == 0
    assert float(prepared["advantages"][scored].mean()) == pytest.approx(0.0, abs=1e-5)
    assert (prepared["returns"][0, 5] == 0) and prepared["returns"][1, 5] != 0
    loss = objective(model, prepared)
    loss.backward()
    assert model.value.weight.grad.abs().sum() > 0
    assert set(objective.step_metrics) >= {"reward", "kl", "clipped", "value_loss"}


def test_ptx_adds_the_language_modelling_loss():
    model = PolicyWithValue(make("native"))
    objective = PPOObjective(PPOSettings(ptx_coef=0.5), Reference(model))
    with torch.no_grad():
        prepared = objective.prepare(model, rollout())
    plain = float(objective(model, prepared))
    text = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mixed = objective(model, {**prepared, "ptx_input_ids": text, "ptx_labels": text})
    lm = float(model(input_ids=text, labels=text).loss)
    assert float(mixed) == pytest.approx(plain + 0.5 * lm, abs=1e-5)
    assert objective.step_metrics["ptx_loss"] == pytest.approx(lm, abs=1e-5)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="ppo.kl_coef"):
        PPOSettings(kl_coef=-1).validate()
    with pytest.raises(ConfigError, match="gamma"):
        PPOSettings(lam=1.5).validate()
