"""What keeps a GPU on its fast paths, checked on the CPU: a training step of the native model
is one torch.compile graph (its traced loss equals the chunked eager one), and attention hands
SDPA a mask only where one is needed (a mask rules out the flash kernel)."""

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


def test_sdpa_gets_a_mask_only_where_one_is_needed() -> None:
    """Training, an unpadded batch and a prefill into an empty cache run SDPA's fused causal
    path (flash on CUDA); padding, and new tokens after cached ones, need a mask."""
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=300)).eval()
    seen: list[tuple[bool, bool]] = []
    for block in model.model.layers:
        kernel = block.self_attn.kernel

        def spy(q, k, v, mask, p, is_causal, kernel=kernel):
            seen.append((mask is not None, is_causal))
            return kernel(q, k, v, mask, p, is_causal)

        block.self_attn.kernel = spy
    ids = torch.randint(0, 300, (2, 8))
    ones = torch.ones(2, 8, dtype=torch.long)
    padded = ones.clone()
    padded[0, :3] = 0
    cache = None
    calls = {
        "training": lambda: model.train()(input_ids=ids, labels=ids),
        "unpadded": lambda: model.eval()(input_ids=ids, attention_mask=ones),
        "prefill": lambda: model(input_ids=ids, use_cache=True),
        "decode": lambda: model(input_ids=ids[:, :1], past_key_values=cache),
        "chunk": lambda: model(input_ids=ids[:, :2], past_key_values=cache),
        "padded": lambda: model(input_ids=ids, attention_mask=padded),
    }
    found = {}
    for name, call in calls.items():
        seen.clear()
        out = call()
        cache = out.past_key_values if name == "prefill" else cache
        found[name] = set(seen)
    assert found == {
        "training": {(False, True)},
        "unpadded": {(False, True)},
        "prefill": {(False, True)},
        "decode": {(False, False)},  # one query sees every key: no mask at all
        "chunk": {(True, False)},
        "padded": {(True, False)},
    }
