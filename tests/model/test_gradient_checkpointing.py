"""Gradient checkpointing recomputes activations in backward: same loss, same gradients."""

import pytest
import torch

from lmforge import peft
from lmforge.errors import ConfigError
from lmforge.model import set_gradient_checkpointing
from lmforge.train import default_objective
from tests.models import BACKENDS, ids, make


def loss_and_grads(model, enabled: bool, dropout_seed: int | None = None):
    set_gradient_checkpointing(model, enabled)
    model.train()
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    batch = {"input_ids": ids(), "labels": ids()}
    loss = default_objective(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_checkpointing_keeps_loss_and_gradients(backend, method):
    model = make(backend)
    if method != "full":
        settings = {"r": 4, "targets": "all-linear"}
        if method == "qlora":  # the block size must divide nothing in particular: width 64
            settings["blocksize"] = 64
        model = peft.apply(model, method, settings).model
    plain_loss, plain = loss_and_grads(model, False)
    loss, grads = loss_and_grads(model, True)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_replays_dropout_with_the_same_masks():
    from lmforge.model import CausalLM, preset

    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=61, d_model=64, n_layer=2, dropout=0.2))
    plain_loss, plain = loss_and_grads(model, False, dropout_seed=3)
    loss, grads = loss_and_grads(model, True, dropout_seed=3)
    assert torch.equal(loss, plain_loss)
    for name in grads:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_off_in_eval_and_for_cached_decoding():
    model = make("native")
    set_gradient_checkpointing(model)
    with torch.no_grad():
        out = model(ids(), use_cache=True)
    assert out.past_key_values is not None and out.past_key_values.length == ids().shape[1]


def test_a_model_without_checkpointing_support_is_refused():
    with pytest.raises(ConfigError, match="set gradient_checkpointing=False"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2))
