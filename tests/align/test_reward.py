"""Reward models: the Bradley–Terry loss by hand, parity with trl's RewardTrainer (loss and
gradients) on a transformers Llama and its native copy, LoRA and full, save → load."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge import peft
from lmforge.align.reward import (
    RewardModel,
    RewardObjective,
    RewardSettings,
    bradley_terry_loss,
    last_positions,
    pairwise_accuracy,
)
from lmforge.align.store import load_reward_model, save_head, save_trained
from lmforge.errors import CheckpointError
from tests.align.helpers import chat_tokenizer, hf_tokenizer, llama, make

trl = pytest.importorskip("trl")


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.2, 0.5])
    margin = torch.tensor([0.1, 0.0])

    def nls(x):
        return -math.log(1 / (1 + math.exp(-x)))

    want = (nls(0.8 - 0.1) + nls(-1.0)) / 2 + 0.3 * ((1.2**2 + 0.0**2) / 2)
    got = bradley_terry_loss(chosen, rejected, margin, center=0.3)
    assert float(got) == pytest.approx(want, abs=1e-6)
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx((nls(0.8) + nls(-1)) / 2)


def test_last_positions_find_the_last_real_token_on_either_side():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert last_positions(mask, mask).tolist() == [2, 3, 3]


def batch():
    """Two pairs, trl's layout: chosen rows first, right padding with id 0."""
    ids = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 11, 12, 13], [5, 6, 14, 0, 0], [9, 10, 15, 16, 0]])
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def trl_reward(tmp_path, center):
    """trl's RewardTrainer on a LlamaForSequenceClassification with the causal LM's body."""
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification

    causal = llama()
    config = causal.config
    config.num_labels, config.pad_token_id = 1, 0  # pools at the last token before padding
    classifier = LlamaForSequenceClassification(config)
    classifier.model.load_state_dict(causal.model.state_dict())
    with torch.no_grad():
        classifier.score.weight.copy_(
            torch.randn(1, 64, generator=torch.Generator().manual_seed(5))
        )
    args = trl.RewardConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        center_rewards_coefficient=center,
    )
    data = Dataset.from_list([{"chosen": "a b", "rejected": "a c"}] * 2)
    trainer = trl.RewardTrainer(
        model=classifier,
        args=args,
        train_dataset=data,
        processing_class=hf_tokenizer(chat_tokenizer()),
    )
    return trainer, classifier


@pytest.mark.parametrize("backend", ["hf", "native"])
def test_loss_and_gradients_equal_trl(backend, tmp_path):
    center = 0.01
    trainer, theirs = trl_reward(tmp_path, center)
    theirs.train()
    b = batch()
    trl_loss = trainer.compute_loss(theirs, {k: b[k] for k in ("input_ids", "attention_mask")})
    trl_loss.backward()

    ours = RewardModel(make(backend))
    with torch.no_grad():
        ours.score.weight.copy_(theirs.score.weight)
    ours.train()
    objective = RewardObjective(RewardSettings(center=center))
    loss = objective(ours, b)
    loss.backward()
    assert abs(float(loss) - float(trl_loss)) < 1e-5
    assert torch.allclose(ours.score.weight.grad, theirs.score.weight.grad, atol=1e-5)
    theirs_g = {n: p.grad for n, p in theirs.model.named_parameters()}
    for name, p in ours.base_model.model.named_parameters():
        assert torch.allclose(p.grad, theirs_g[name], atol=1e-5), name
    assert objective.step_metrics["accuracy"] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_lora_reward_model_trains_only_the_delta_and_head_and_round_trips(backend, tmp_path):
    from lmforge.hub import load_model

    base = make(backend)
    (tmp_path / "base").mkdir()
    if backend == "hf":
        base.save_pretrained(str(tmp_path / "base"))
    else:
        from lmforge.model.hf import save_hf_dir

        save_hf_dir(base, tmp_path / "base")
    lm = load_model(tmp_path / "base", backend=backend)
    delta = peft.apply(lm, "lora", {"r": 4}, seed=0)
    model = RewardModel(delta.model, seed=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "score.weight" in trainable and all("lora_" in n for n in trainable - {"score.weight"})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    objective = RewardObjective()
    for _ in range(3):
        optimizer.zero_grad()
        objective(model, batch()).backward()
        optimizer.step()
    before = pairwise_accuracy(model, [batch()])
    save_trained(delta.model, delta, tmp_path / "run", str(tmp_path / "base"), backend)
    save_head(model.score, tmp_path / "run" / "score.safetensors")
    again = load_reward_model(tmp_path / "run")
    b = batch()
    with torch.no_grad():
        want = model.eval()(b["input_ids"], b["attention_mask"])
        assert torch.allclose(again(b["input_ids"], b["attention_mask"]), want, atol=1e-6)
    assert pairwise_accuracy(again, [batch()]) == before
    with pytest.raises(CheckpointError, match="not a reward model run"):
        load_reward_model(tmp_path / "base")
