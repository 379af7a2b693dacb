"""kNN-LM: the interpolation equals the formula on a toy datastore; the hook reads the head's
input on native and transformers models; the wrapped model plugs into perplexity."""

import math

import pytest
import torch

from lmforge.eval.ppl import perplexity
from lmforge.knowledge.knn_lm import KNNLM, Datastore, build_datastore, knn_distribution
from tests.models import make


def test_knn_distribution_by_hand():
    store = Datastore(
        keys=torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]),
        values=torch.tensor([1, 2, 1, 0]),
    )
    p = knn_distribution(torch.tensor([[0.0, 1.0]]), store, vocab=4, k=3, temperature=2.0)
    d2 = {0: 1.0, 1: 2.0, 2: 1.0}  # the three nearest keys: squared distances 1, 2, 1
    z = sum(math.exp(-d / 2.0) for d in d2.values())
    expected = [0.0, 2 * math.exp(-0.5) / z, math.exp(-1.0) / z, 0.0]
    assert p[0].tolist() == pytest.approx(expected, abs=1e-6)
    blocked = knn_distribution(torch.tensor([[0.0, 1.0]]), store, 4, 3, 2.0, block=1)
    assert torch.allclose(blocked, p)


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_interpolation_equals_the_formula(backend):
    model = make(backend)
    ids = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(3))
    store = Datastore(
        torch.randn(40, 64, generator=torch.Generator().manual_seed(4)),
        torch.randint(0, 61, (40,), generator=torch.Generator().manual_seed(5)),
    )
    knn = KNNLM(model, store, k=5, lam=0.3, temperature=10.0)
    with torch.no_grad():
        out = knn(input_ids=ids, labels=ids)
        base = model(input_ids=ids)
        hidden = _last_hidden(model, ids)  # (1, T, 64)
    p_knn = knn_distribution(hidden[0], store, 61, 5, 10.0)
    expected = 0.3 * p_knn + 0.7 * base.logits[0].softmax(-1)
    assert torch.allclose(out.logits[0].exp(), expected, atol=1e-6)
    nll = -expected[:-1].log().gather(1, ids[0, 1:, None]).mean()
    assert out.loss.item() == pytest.approx(nll.item(), rel=1e-5)


def _last_hidden(model, ids):
    """The head's input: transformers returns it as the last hidden state (after the final
    norm); the native model is read with a hook of its own."""
    if hasattr(model, "config") and getattr(model.config, "model_type", "") == "llama":
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    seen = []
    handle = model.model.norm.register_forward_hook(lambda m, i, o: seen.append(o))
    model(input_ids=ids)
    handle.remove()
    return seen[0]


def test_datastore_pairs_each_state_with_the_next_token_and_ppl_drops(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm.model, tiny_lm.tokenizer
    text = ["the sky is blue because of rayleigh scattering. " * 6]
    store = build_datastore(model, tokenizer, text, window=32)
    stream = tokenizer.encode(text[0])
    assert store.values.tolist() == stream[1:]
    assert store.keys.shape == (len(stream) - 1, 64)
    store.save(tmp_path / "ds.safetensors")
    again = Datastore.load(tmp_path / "ds.safetensors")
    assert torch.equal(again.keys, store.keys) and torch.equal(again.values, store.values)
    before = perplexity(model, tokenizer, text, max_length=32).perplexity
    after = perplexity(KNNLM(model, store, k=4, lam=0.5), tokenizer, text, max_length=32)
    assert after.perplexity < before  # the text is in the datastore: neighbours know it
