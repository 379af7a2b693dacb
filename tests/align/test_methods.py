"""Alignment works with every delta method on both model kinds: the log-probabilities of the
scored tokens equal the model's own logits, the reference is the model at its start, and a
DPO step moves only the method's parameters."""

from __future__ import annotations

import pytest
import torch

from lmforge import peft
from lmforge.align.dpo import DPOObjective, DPOSettings
from lmforge.align.logprobs import Reference, token_logprobs
from tests.align.helpers import make, nudge
from tests.peft.test_contract import CASES

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 11, 12, 0, 0], [5, 6, 13, 0, 0, 0]])
MASK = (IDS != 0).long()
LABELS = IDS.masked_fill(MASK == 0, -100)
LABELS[:, :2] = -100  # a two-token prompt


def by_logits(model) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, IDS[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(logp * (LABELS[:, 1:] != -100), (1, 0))


@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize("method", list(CASES))
def test_every_delta_method(method, backend):
    delta = peft.apply(make(backend), method, CASES[method], seed=0)
    model = delta.model.train()
    reference = Reference(model)
    start = by_logits(model)
    nudge(model)
    got = token_logprobs(model, IDS, MASK, LABELS)
    assert torch.allclose(got, by_logits(model), atol=1e-4)
    with torch.no_grad(), reference.active():
        assert torch.allclose(token_logprobs(model, IDS, MASK, LABELS), start, atol=1e-5)
    batch = {"input_ids": IDS[[0, 1]], "attention_mask": MASK[[0, 1]], "labels": LABELS[[0, 1]]}
    DPOObjective(DPOSettings(), reference)(model, batch).backward()
    own = {id(p) for p in delta.trainable_parameters().values()}
    moved = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and moved <= own
