"""The engine: continuous batching gives each request the tokens it gets alone; blocks are
freed; prefix-cache hits are counted; chunked prefill, preemption, cancellation, sampling."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig
from tests.serve.helpers import alone, engine, greedy, model, request


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(3, 300, (int(k),), generator=g).tolist() for k in (5, 17, 2, 30, 9, 23)[:n]
    ]


def test_requests_joining_and_leaving_get_the_tokens_they_get_alone(base, tok):
    eng = engine(base, tok, block_size=4, step_tokens=12, max_running=4)
    jobs = [request(p, greedy(n)) for p, n in zip(prompts(6), (9, 3, 14, 6, 11, 4))]
    eng.submit(jobs[0][0])
    eng.submit(jobs[1][0])
    for step, (req, _) in enumerate(jobs[2:]):
        for _ in range(step + 1):
            eng.step()  # the others arrive while earlier ones decode
        eng.submit(req)
    eng.run_until_idle()
    for req, sink in jobs:
        assert sink.tokens == alone(base, req.prompt, req.sampling)
        assert sink.finish == "length"
    assert eng.blocks.used() == 0  # every block came back
    assert eng.stats.steps < sum(len(r.prompt) + r.sampling.max_new_tokens for r, _ in jobs)


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(base, tok):
    eng = engine(base, tok, block_size=4, step_tokens=6, max_running=4)
    short, sink_short = request(prompts(1)[0], greedy(12))
    eng.submit(short)
    eng.step()
    eng.step()
    long_prompt = prompts(4, seed=3)[3] * 2  # 60 tokens: ten steps of prefill at this budget
    long, sink_long = request(long_prompt, greedy(5))
    eng.submit(long)
    before = len(sink_short.tokens)
    eng.step()
    eng.step()
    assert len(sink_short.tokens) == before + 2  # the decode did not wait for the prefill
    eng.run_until_idle()
    assert sink_long.tokens == alone(base, long_prompt, long.sampling)
    assert sink_short.tokens == alone(base, short.prompt, short.sampling)


def test_prefix_cache_reuses_a_shared_prompt_and_counts_the_hits(base, tok):
    eng = engine(base, tok, block_size=4, step_tokens=64)
    system = prompts(4)[3][:13]
    first, _ = request(system + [7, 8], greedy(4))
    eng.submit(first)
    eng.run_until_idle()
    assert eng.blocks.stats.hit_tokens == 0
    second, sink = request(system + [9, 10, 11], greedy(6))
    eng.submit(second)
    eng.run_until_idle()
    assert eng.blocks.stats.hit_tokens == 12  # three full blocks of the shared 13 tokens
    assert sink.tokens == alone(base, second.prompt, second.sampling)
    other, _ = request(system + [9, 10, 11], greedy(2), adapter="")
    eng.blocks.prefix_caching = False
    eng.submit(other)
    eng.run_until_idle()
    assert eng.blocks.stats.hit_tokens == 12  # switched off: looked up, never found
    assert eng.blocks.used() == 0


def test_a_full_cache_preempts_and_recomputes_without_changing_tokens(base, tok):
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # layers · (k, v) · block · kv heads · head dim · fp32
    eng = engine(base, tok, block_size=4, step_tokens=64, kv_cache_mb=14 * per_block / 2**20)
    jobs = [request(p, greedy(16)) for p in prompts(4)]
    for req, _ in jobs:
        eng.submit(req)
    eng.run_until_idle()
    assert eng.stats.preemptions > 0
    for req, sink in jobs:
        assert sink.tokens == alone(base, req.prompt, req.sampling)
    assert eng.blocks.used() == 0


def test_cancelled_requests_stop_and_give_their_blocks_back(base, tok):
    eng = engine(base, tok, block_size=4)
    kept, kept_sink = request(prompts(2)[0], greedy(10))
    gone, gone_sink = request(prompts(2)[1], greedy(40))
    eng.submit(kept)
    eng.submit(gone)
    for _ in range(3):
        eng.step()
    eng.cancel(gone)
    eng.run_until_idle()
    assert gone_sink.finish == "cancelled" and len(gone_sink.tokens) < 40
    assert kept_sink.tokens == alone(base, kept.prompt, kept.sampling)
    assert eng.blocks.used() == 0


def test_each_request_samples_with_its_own_settings_in_one_batch(base, tok):
    eng = engine(base, tok, block_size=4)
    settings = [
        SamplingConfig(max_new_tokens=8, temperature=0.9, top_k=20, seed=1),
        greedy(8),
        SamplingConfig(max_new_tokens=8, temperature=1.3, top_p=0.8, seed=7),
        greedy(8, repetition_penalty=1.3),
    ]
    jobs = [request(p, s) for p, s in zip(prompts(4), settings)]
    for req, _ in jobs:
        eng.submit(req)
    eng.run_until_idle()
    for req, sink in jobs:
        assert sink.tokens == alone(base, req.prompt, req.sampling)


def test_eos_ends_a_request_and_logprobs_are_reported(base, tok):
    prompt = prompts(1)[0]
    reference = alone(base, prompt, greedy(6))
    eng = engine(base, tok)
    req, sink = request(prompt, greedy(6), eos=[reference[2]], logprobs=3)
    eng.submit(req)
    eng.run_until_idle()
    assert sink.tokens == reference[:2] and sink.finish == "eos"
    lp = [p for o in sink.outputs for p in o.logprobs]
    assert [p.token for p in lp] == reference[:3]
    assert all(p.top[0][0] == p.token and p.logprob <= 0 and len(p.top) == 3 for p in lp)


def test_requests_beyond_the_context_or_the_cache_are_refused(base, tok):
    eng = engine(base, tok, block_size=4, kv_cache_mb=4 * 2 * 2 * 4 * 2 * 16 * 4 / 2**20)
    with pytest.raises(ConfigError, match="exceed the model's context"):
        eng.submit(request([5] * 100, greedy(40))[0])
    req, sink = request([5] * 30, greedy(4))
    eng.submit(req)
    eng.run_until_idle()
    assert sink.finish == "error" and "KV cache" in sink.outputs[-1].error


def test_text_streams_in_stable_pieces(tok):
    lm = model(tok.vocab_size, seed=2)
    eng = engine(lm, tok)
    prompt = tok.encode("To be, or not 明月")
    req, sink = request(prompt, greedy(12))
    eng.submit(req)
    eng.run_until_idle()
    assert sink.text == tok.decode(alone(lm, prompt, req.sampling))
    assert all("\ufffd" not in o.text for o in sink.outputs[:-1])


def test_the_background_thread_serves_submissions(base, tok):
    eng = engine(base, tok, block_size=4)
    eng.start()
    jobs = [request(p, greedy(5)) for p in prompts(3)]
    for req, _ in jobs:
        eng.submit(req)
    eng.stop(timeout=60)
    for req, sink in jobs:
        assert sink.tokens == alone(base, req.prompt, req.sampling)


def test_the_engine_decodes_a_quantized_model_as_generate_does(tok):
    from lmforge.quant.decode import quantize_for_decoding

    lm = model(tok.vocab_size)
    quantize_for_decoding(lm, "int8")
    eng = engine(lm, tok, block_size=4)
    jobs = [request(p, greedy(6)) for p in prompts(3)]
    for req, _ in jobs:
        eng.submit(req)
    eng.run_until_idle()
    for req, sink in jobs:
        assert sink.tokens == alone(lm, req.prompt, req.sampling)


def test_a_retention_model_is_refused_with_the_way_to_decode_it(tok):
    retnet = CausalLM(preset("tiny", vocab_size=tok.vocab_size, mixer="retention"))
    with pytest.raises(ConfigError, match="mixer is 'retention'.*lmforge generate"):
        engine(retnet, tok)
