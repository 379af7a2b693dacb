"""The chat page at / in headless Chromium (Debian's `chromium`): a streamed reply appears."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import urllib.parse

import pytest

from lmforge.chat import chat_format, chat_stop_tokens
from tests.serve.helpers import LiveServer, alone, greedy, model, server_state, tokenizer

pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_page_streams_a_reply_in_a_browser(tmp_path):
    tok = tokenizer()
    lm = model(tok.vocab_size)
    state = server_state(lm, tok)
    state.defaults = {"temperature": 0.0}  # the checkpoint's default: greedy, so predictable
    question = "To be, or not 明月?"
    with LiveServer(state) as server:
        url = f"{server.url}/?q={urllib.parse.quote(question)}"
        dom = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--user-data-dir=" + str(tmp_path),
                "--virtual-time-budget=30000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    replies = re.findall(r'<div class="msg assistant" data-done="1">(.*?)</div>', dom, re.S)
    ids = tok.encode(chat_format([{"role": "user", "content": question}], tok))
    eos = [tok.eos_id, *chat_stop_tokens(tok)]
    expected = tok.decode(alone(lm, ids, greedy(state.limits.max_tokens), eos=eos))
    assert [html.unescape(r) for r in replies] == [expected]
