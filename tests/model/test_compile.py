"""torch.compile: a training step of the native model is one graph, and the loss it traces
equals the chunked eager loss."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from lmforge.model import CausalLM, loss_only, preset
from lmforge.model.host import set_gradient_checkpointing
from lmforge.model.loss import LossPlan, linear_cross_entropy


@pytest.mark.parametrize("trained_head", [True, False], ids=["trained-head", "frozen-head"])
def test_the_traced_loss_equals_the_chunked_one(trained_head) -> None:
    torch.manual_seed(0)
    h = torch.randn(2, 24, 16, requires_grad=True)
    w = torch.randn(50, 16).requires_grad_(trained_head)
    labels = torch.randint(0, 50, (2, 24))
    labels[1, :7] = -100
    grads = []
    for plan in (
        LossPlan(torch.float32, chunk_rows=8, budget=96),
        LossPlan(torch.float32, traced=True),
    ):
        loss = linear_cross_entropy(h, w, labels, plan)
        grads.append((loss, *torch.autograd.grad(loss, [h, w] if trained_head else [h])))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_a_training_forward_is_one_graph() -> None:
    """What dynamo traces of the loop's default objective: no graph break, with gradient
    checkpointing and with padded rows too."""
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300)).train()
    ids = torch.randint(0, 300, (2, 32))
    padded = torch.ones(2, 32, dtype=torch.long)
    padded[1, 20:] = 0

    def objective(model: CausalLM, mask: torch.Tensor | None) -> torch.Tensor:
        with loss_only(model):
            return model(input_ids=ids, attention_mask=mask, labels=ids).loss

    for mask, recompute in ((None, False), (None, True), (padded, False)):
        set_gradient_checkpointing(model, recompute)
        dynamo.reset()
        explained = dynamo.explain(objective)(model, mask)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (
            explained.break_reasons
        )
