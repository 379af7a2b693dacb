"""RetNet's retention: the parallel, recurrent and chunkwise forms agree; the model decodes
through its recurrent state with the one generate API; saved models load back exactly."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, RetentionCache, host_for, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.hf import load_hf_dir, save_hf_dir
from lmforge.model.retention import (
    chunkwise_retention,
    head_decays,
    parallel_retention,
    recurrent_retention,
)

V = 97
TOL = 1e-5


def qkv(B=2, h=4, T=37, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, T, d, generator=g) for _ in range(3))
    return q, k / d**0.5, v


def recurrent(q, k, v, log_decay):
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[2]):
        s = slice(t, t + 1)
        out, state = recurrent_retention(q[:, :, s], k[:, :, s], v[:, :, s], log_decay, state)
        outs.append(out)
    return torch.cat(outs, dim=2), state


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
def test_parallel_recurrent_and_chunkwise_forms_are_equal(chunk):
    q, k, v = qkv()
    log_decay = head_decays(4)
    parallel = parallel_retention(q, k, v, log_decay)
    stepped, last = recurrent(q, k, v, log_decay)
    zero = q.new_zeros(2, 4, 16, 16)
    chunked, final = chunkwise_retention(q, k, v, log_decay, zero, chunk)
    assert (parallel - stepped).abs().max() <= TOL
    assert (parallel - chunked).abs().max() <= TOL
    assert (last - final).abs().max() <= TOL * last.abs().max()


def test_each_head_decays_at_its_own_rate():
    assert torch.allclose(head_decays(3).exp(), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128]))
    q, k, v = qkv(B=1, h=2, T=6, d=4)
    out = parallel_retention(q, k, v, head_decays(2))
    gamma = head_decays(2).exp()
    n = 5  # the last query, by the definition Σ_m γ^(n−m) (q_n·k_m) v_m
    for h in range(2):
        manual = sum(gamma[h] ** (n - m) * (q[0, h, n] @ k[0, h, m]) * v[0, h, m] for m in range(6))
        assert torch.allclose(out[0, h, n], manual, atol=1e-6)


def retnet(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(vocab_size=V, mixer="retention", tie_embeddings=False, init_std=0.3)
    return CausalLM(preset("tiny", **{**fields, **overrides})).eval()


def ids(B=2, T=20, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_the_model_gives_the_same_logits_in_every_form():
    model = retnet()
    x = ids()
    parallel = model(x).logits
    cache = model.new_cache(2, 0)
    prefill = model(x[:, :7], past_key_values=cache, use_cache=True).logits  # chunkwise
    steps = [
        model(x[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(7, 20)
    ]  # recurrent
    cached = torch.cat([prefill, *steps], dim=1)
    scale = parallel.abs().max()  # logits of order 5: compare relative to them
    assert (parallel - cached).abs().max() <= TOL * scale
    assert cache.length == 20
    chunked = retnet(chunk_size=6)(x).logits  # uncached, longer than a chunk
    assert (parallel - chunked).abs().max() <= TOL * scale


def test_chunkwise_training_gives_the_parallel_loss_and_gradients():
    x = ids(T=24)
    grads = []
    for chunk in (512, 5):
        model = retnet(chunk_size=chunk).train()
        loss = model(x, labels=x).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = grads
    assert torch.allclose(a, b, atol=TOL)
    assert all(torch.allclose(ga[n], gb[n], atol=1e-5) for n in ga)


def test_the_state_has_the_same_size_whatever_the_context():
    model = retnet()
    cache = model.new_cache(1, 0)
    assert isinstance(cache, RetentionCache) and not cache.packs
    sizes = []
    with torch.no_grad():
        for t in range(30):
            model(ids(B=1, T=1, seed=t), past_key_values=cache, use_cache=True)
            sizes.append(sum(s.numel() for s in cache.states))
    assert len(set(sizes)) == 1 and sizes[0] == 2 * 4 * 16 * 16  # layers × heads × d × d


def greedy(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_generate_decodes_through_the_state_in_padded_batches():
    model = retnet()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    batched = generate(model, prompts, SamplingConfig(max_new_tokens=10, temperature=0.0))
    for prompt, result in zip(prompts, batched):
        assert result.token_ids == greedy(model, prompt, 10)
    assert isinstance(host_for(model).new_cache(3, 20), RetentionCache)


def test_save_load_generate(tmp_path):
    model = retnet()
    save_hf_dir(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lmforge"
    back = load_hf_dir(tmp_path)
    assert back.config == model.config
    x = ids()
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    assert generate(back, [[1, 2, 3]], config)[0].token_ids == greedy(model, [1, 2, 3], 6)


def test_a_retention_state_refuses_key_value_prefixes():
    cache = retnet().new_cache(1, 4)
    with pytest.raises(ConfigError, match="prefix methods .* need an attention model"):
        cache.update(0, torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16))
