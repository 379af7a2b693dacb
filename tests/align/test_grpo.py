"""GRPO: group advantages and the clipped, KL-penalised loss by hand, and both against trl's
GRPOTrainer on the same completions (its own sampling, our loss on its batch)."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.align.grpo import GRPOObjective, GRPOSettings, group_advantages, grpo_token_loss, k3
from lmforge.align.logprobs import token_logprobs
from lmforge.errors import ConfigError
from tests.align.helpers import chat_tokenizer, grads, hf_tokenizer, llama, nudge

trl = pytest.importorskip("trl")


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0])
    std = math.sqrt((0.25 + 0.25) / 3)  # unbiased, over the first group
    want = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert group_advantages(rewards, 4).tolist() == pytest.approx(want, abs=1e-6)
    assert group_advantages(rewards, 4, scale=False).tolist() == [0.5, -0.5, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ConfigError, match="groups of 3"):
        group_advantages(rewards, 3)


def test_clipped_loss_and_k3_by_hand():
    logps = torch.tensor([[-1.0, -2.0], [-1.0, -0.5]])
    old = torch.tensor([[-1.5, -2.0], [-0.5, -0.5]])  # ratios e^0.5, 1 | e^-0.5, 1
    adv = torch.tensor([2.0, -1.0])
    ref = torch.tensor([[-1.2, -2.0], [-1.0, -0.7]])
    s = GRPOSettings(beta=0.1, epsilon=0.2)
    loss, clipped = grpo_token_loss(logps, old, adv, s, ref)
    r1, r3 = math.exp(0.5), math.exp(-0.5)
    kl = math.exp(-0.2) + 0.2 - 1  # k3 where log π_ref − log π = −0.2 (first and last token)
    want = [
        [-min(r1 * 2, 1.2 * 2) + 0.1 * r1 * kl, -2.0],  # the KL term weighted by ρ
        [-min(-r3, -0.8) + 0.0, 1.0 + 0.1 * kl],
    ]
    assert loss.tolist() == [pytest.approx(row, abs=1e-6) for row in want]
    plain, _ = grpo_token_loss(logps, old, adv, GRPOSettings(beta=0.1, unbiased_kl=False), ref)
    assert float(plain[0, 0]) == pytest.approx(-2.4 + 0.1 * kl, abs=1e-6)
    assert clipped.tolist() == [[True, False], [True, False]]
    assert float(k3(logps, logps).abs().sum()) == 0.0 and bool((k3(logps, ref) >= 0).all())


def trl_rollout(tmp_path, loss_type, temperature, unbiased_kl):
    tok = chat_tokenizer()
    model = llama(vocab=tok.vocab_size)
    nudge(model)
    rewards = [1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0]
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=5,
        temperature=temperature,
        loss_type=loss_type,
        use_bias_correction_kl=unbiased_kl,
        bf16=False,
        use_cpu=True,
        report_to=[],
        beta=0.0,  # trl would load its reference by name; we give it π_ref's log-probs below
        save_strategy="no",
    )
    from datasets import Dataset

    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: rewards[: len(completions)],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "two plus"}, {"prompt": "the answer"}] * 4),
        processing_class=hf_tokenizer(tok),
    )
    model.train()
    inputs = [{"prompt": "two plus"}] * 4 + [{"prompt": "the answer"}] * 4
    torch.manual_seed(0)
    return trainer, model, trainer._generate_and_score_completions(inputs), rewards


@pytest.mark.parametrize(
    "loss_type, temperature, unbiased_kl",
    [("grpo", 1.0, True), ("bnpo", 0.7, False), ("dr_grpo", 1.0, True)],
)
def test_advantages_loss_and_gradients_equal_trl(loss_type, temperature, unbiased_kl, tmp_path):
    trainer, theirs, out, rewards = trl_rollout(tmp_path, loss_type, temperature, unbiased_kl)
    assert torch.allclose(out["advantages"], group_advantages(torch.tensor(rewards), 4), atol=1e-6)

    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    labels = torch.full_like(ids, -100)
    P = out["prompt_ids"].shape[1]
    labels[:, P:] = out["completion_ids"].masked_fill(out["completion_mask"] == 0, -100)
    reference = llama(vocab=theirs.config.vocab_size)  # π_ref: the weights before the nudge
    with torch.no_grad():
        ref = token_logprobs(reference, ids, mask, labels, temperature)  # (B, T)
    trainer.beta, trainer.current_gradient_accumulation_steps = 0.04, 1
    trl_loss = trainer._compute_loss(theirs, {**out, "ref_per_token_logps": ref[:, P:]})
    trl_loss.backward()

    ours = llama(vocab=theirs.config.vocab_size)
    nudge(ours)
    ours.train()
    settings = GRPOSettings(beta=0.04, epsilon=0.2, loss=loss_type, unbiased_kl=unbiased_kl)
    objective = GRPOObjective(settings, 4, None, temperature, max_new_tokens=5)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "advantages": out["advantages"],
        "rewards": torch.tensor(rewards),
        "ref_logps": ref,
    }
    loss = objective(ours, batch)
    loss.backward()
    assert abs(float(loss) - float(trl_loss)) < 1e-5
    for name, g in grads(theirs).items():
        assert torch.allclose(grads(ours)[name], g, atol=1e-5), name
    assert objective.step_metrics["kl"] > 0 and objective.step_metrics["reward"] == 0.75


def test_prepare_needs_the_reference_for_a_kl_penalty():
    objective = GRPOObjective(GRPOSettings(beta=0.1), 2, None)
    rollout = {"rewards": torch.tensor([1.0, 0.0])}
    with pytest.raises(ConfigError, match="reference"):
        objective.prepare(None, rollout)
