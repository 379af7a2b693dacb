"""Malformed and hostile requests against a live server: never a 500, never a dead worker,
and afterwards it still answers a good request correctly (hypothesis, bounded)."""

from __future__ import annotations

import json

import httpx
import pytest

from lmforge.serve.limits import Limits
from tests.serve.helpers import LiveServer, alone, greedy, model, server_state, tokenizer

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]
GOOD = {
    "/v1/completions": {"model": "tiny", "prompt": "To be", "max_tokens": 3},
    "/v1/chat/completions": {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
    },
    "/v1/embeddings": {"model": "tiny", "input": "x"},
}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "echo",
    "input",
    "tools",
    "response_format",
    "max_completion_tokens",
    "logit_bias",
    "presence_penalty",
]


@st.composite
def bodies(draw):
    """A good body with some fields replaced by anything, or random JSON, or random bytes."""
    path = draw(st.sampled_from(PATHS))
    kind = draw(st.sampled_from(["mutated", "json", "bytes", "deep"]))
    if kind == "bytes":
        return path, draw(st.binary(max_size=200))
    if kind == "json":
        return path, json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(10, 5000))
        return path, ("[" * depth + "]" * depth).encode()
    body = dict(GOOD[path])
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4)):
        body[field] = draw(json_values)
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 6))  # keep the run short when it is valid
    return path, json.dumps(body).encode()


@pytest.fixture(scope="module")
def live():
    tok = tokenizer()
    lm = model(tok.vocab_size)
    state = server_state(lm, tok, limits=Limits(max_tokens=8, max_n=2, max_body_bytes=20000))
    with LiveServer(state) as server:
        yield server, lm, tok


def test_hostile_requests_never_break_the_server(live):
    server, lm, tok = live
    statuses = []

    @hypothesis.settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(bodies(), st.sampled_from(["application/json", "text/plain", ""]))
    def hit(case, content_type):
        path, raw = case
        headers = {"content-type": content_type} if content_type else {}
        r = httpx.post(server.url + path, content=raw, headers=headers, timeout=60)
        statuses.append(r.status_code)
        assert r.status_code < 500, (path, raw[:200], r.text[:300])
        if r.status_code >= 400:
            assert "message" in r.json()["error"]

    hit()
    assert {400, 422} <= set(statuses)  # the strategies did reach the validators
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    good = httpx.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "To be", "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()
    expected = tok.decode(alone(lm, tok.encode("To be", True), greedy(6), eos=[tok.eos_id]))
    assert good["choices"][0]["text"] == expected
