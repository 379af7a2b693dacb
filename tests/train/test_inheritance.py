"""Knowledge inheritance: the loss by hand, the weight schedule, top-k, the cache, a
transformers teacher, and the vocabulary check."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.train import TrainConfig, build_objective
from lmforge.train.objectives import KnowledgeInheritance
from lmforge.train.objectives.distill import InheritanceSettings, TeacherCache

STUDENT = [[[1.0, 0.0, -1.0, 0.5], [0.2, 0.4, 0.1, -0.3], [0.0, 2.0, 0.0, 0.0]]]  # (1, 3, 4)
TEACHER = [[[2.0, 0.0, -2.0, 0.1], [0.0, 1.0, 0.5, -1.0], [1.0, 1.0, 1.0, 1.0]]]


class Table(nn.Module):
    """A 'model' whose logits are fixed: the call convention without the network."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.calls = 0

    def forward(self, input_ids, **kwargs):
        self.calls += 1
        return SimpleNamespace(logits=self.logits.expand(len(input_ids), -1, -1))


def softmax(row, tau=1.0):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def by_hand(alpha, tau, labels, top_k=None):
    """(1 − α)·CE + α·τ²·KL over positions 0 and 1 (position t predicts labels[t + 1])."""
    ce = kl = 0.0
    for t in (0, 1):
        ce -= math.log(softmax(STUDENT[0][t])[labels[t + 1]])
        q = softmax(STUDENT[0][t], tau)
        order = sorted(range(4), key=lambda v: -TEACHER[0][t][v])[: top_k or 4]
        p = softmax([TEACHER[0][t][v] for v in order], tau)
        kl += sum(pi * math.log(pi / q[v]) for pi, v in zip(p, order))
    return (1 - alpha) * ce / 2 + alpha * tau**2 * kl / 2


@pytest.mark.parametrize("tau,top_k", [(1.0, 0), (2.0, 0), (1.0, 2)])
def test_the_loss_is_the_hand_computed_ce_and_kl(tau, top_k):
    settings = InheritanceSettings(0.3, "constant", 10, tau, top_k)
    objective = KnowledgeInheritance(Table(TEACHER), settings)
    labels = torch.tensor([[0, 2, 1]])
    loss = objective(
        Table(STUDENT), {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": labels}
    )
    assert abs(loss.item() - by_hand(0.3, tau, [0, 2, 1], top_k)) < 1e-6


def test_linear_decay_reaches_zero_and_then_the_teacher_is_not_run():
    teacher = Table(TEACHER)
    objective = KnowledgeInheritance(teacher, InheritanceSettings(0.5, "linear-decay", 4, 1.0, 0))
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[0, 2, 1]])}
    alphas = []
    for step in range(1, 7):
        objective.at_step(step)
        alphas.append(objective.alpha)
        objective(Table(STUDENT), batch)
    assert alphas == [0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
    assert teacher.calls == 4 and objective.teacher_tokens == 4 * 3
    assert abs(objective(Table(STUDENT), batch).item() - by_hand(0.0, 1.0, [0, 2, 1])) < 1e-6


def test_cached_teacher_logits_are_reused(tmp_path):
    teacher = Table(TEACHER)
    cache = TeacherCache(tmp_path, "teacher", top_k=2)
    objective = KnowledgeInheritance(
        teacher, InheritanceSettings(0.3, "constant", 1, 1.0, 2), cache
    )
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[0, 2, 1]])}
    first = objective(Table(STUDENT), batch)
    again = KnowledgeInheritance(Table([[[0.0] * 4] * 3]), objective.settings, cache)
    assert torch.equal(again(Table(STUDENT), batch), first)  # read from disk, not recomputed
    assert again.teacher_tokens == 0 and len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_a_transformers_teacher_teaches_a_native_student(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "teacher")
    student = CausalLM(preset("tiny", vocab_size=120))  # smaller than the teacher
    cfg = TrainConfig(teacher=str(tmp_path / "teacher"), teacher_backend="hf", kd_weight=0.4)
    objective = build_objective(cfg, student)
    ids = torch.randint(0, 120, (2, 16), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": ids.clone()}
    loss = objective(student, batch)
    with torch.no_grad():
        t = objective.teacher(input_ids=ids).logits
    s = student(ids).logits
    log_p, log_q = t[:, :-1].log_softmax(-1), s[:, :-1].log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    assert torch.allclose(loss, 0.6 * student(**batch).loss + 0.4 * kl, atol=1e-5)
    loss.backward()
    assert student.lm_head.weight.grad is not None
    assert all(p.grad is None for p in objective.teacher.parameters())


def test_the_vocabularies_must_match(tmp_path):
    from lmforge.model.hf import save_hf_dir

    save_hf_dir(CausalLM(preset("tiny", vocab_size=90)), tmp_path / "teacher")
    with pytest.raises(ConfigError, match="vocabulary of 90 tokens, the student 91"):
        build_objective(
            TrainConfig(teacher=str(tmp_path / "teacher")), CausalLM(preset("tiny", vocab_size=91))
        )
    with pytest.raises(ConfigError, match="distils the next-token distribution"):
        build_objective(
            TrainConfig(teacher=str(tmp_path / "teacher"), objective="multi-token"),
            CausalLM(preset("tiny", vocab_size=90)),
        )
    with pytest.raises(ConfigError, match="kd_top_k"):
        TrainConfig(teacher="x", kd_cache=str(tmp_path)).validate()
