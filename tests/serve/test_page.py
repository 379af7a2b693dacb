"""The chat page at / in headless Chromium (Debian's `chromium`): a streamed reply appears.

The browser opens `/?q=...` (the page sends that message once it has listed the models);
the test then reads the page through the DevTools protocol until the reply is complete."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse

import httpx
import pytest

from lmforge.chat import chat_format, chat_stop_tokens
from tests.serve.helpers import LiveServer, alone, free_port, greedy, model, server_state, tokenizer

pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPLY = "(document.querySelector('.assistant[data-done]') || {}).textContent"


def page_value(devtools: int, expression: str, timeout: float = 90.0):
    """Evaluate `expression` in the browser's page until it is not null (DevTools protocol)."""
    ws = pytest.importorskip("websockets.sync.client")
    deadline = time.monotonic() + timeout
    while True:
        try:
            pages = httpx.get(f"http://127.0.0.1:{devtools}/json", timeout=2).json()
            target = next(p for p in pages if p["type"] == "page")
            break
        except (httpx.TransportError, StopIteration):
            assert time.monotonic() < deadline, "the browser did not start"
            time.sleep(0.3)
    with ws.connect(target["webSocketDebuggerUrl"], max_size=None) as conn:
        for i in range(10**6):
            conn.send(
                json.dumps(
                    {
                        "id": i,
                        "method": "Runtime.evaluate",
                        "params": {"expression": expression, "returnByValue": True},
                    }
                )
            )
            answer = json.loads(conn.recv(timeout=30))
            value = answer.get("result", {}).get("result", {}).get("value")
            if value is not None or time.monotonic() > deadline:
                return value
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_page_streams_a_reply_in_a_browser(tmp_path):
    tok = tokenizer()
    lm = model(tok.vocab_size)
    state = server_state(lm, tok)
    state.defaults = {"temperature": 0.0}  # the checkpoint's default: greedy, so predictable
    question = "To be, or not 明月?"
    devtools = free_port()
    with LiveServer(state) as server:
        url = f"{server.url}/?q={urllib.parse.quote(question)}"
        browser = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path}",
                f"--remote-debugging-port={devtools}",
                "--remote-allow-origins=*",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            reply = page_value(devtools, REPLY)
        finally:
            browser.terminate()
            browser.wait(30)
    ids = tok.encode(chat_format([{"role": "user", "content": question}], tok))
    eos = [tok.eos_id, *chat_stop_tokens(tok)]
    assert reply == tok.decode(alone(lm, ids, greedy(state.limits.max_tokens), eos=eos))
