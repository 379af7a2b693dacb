"""What benchmarks/serve.py runs against: servers as child processes and a streaming load.

start(cmd) ─► a server on 127.0.0.1:PORT (waits for /health or /v1/models)
load(url, clients, requests) ─► every client streams its requests one after another;
                                per request: time to first token, gaps between tokens, text
naive server (`python benchmarks/serve_load.py naive PORT`): transformers' generate behind
one lock, one request at a time (what a plain wrapper around generate does)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    "The history of the printing press begins",
    "A good way to stay focused while working from home is",
    "The sky is blue during the day because",
    "Once upon a time, in a village by the sea, there lived",
    "The three most important things to know about Python lists are",
    "Japan in the spring is famous for",
    "To make a simple tomato soup, you",
    "The main difference between a comet and an asteroid is",
]


@dataclass
class RequestTiming:
    ttft: float  # seconds from sending to the first piece of text
    gaps: list[float] = field(default_factory=list)  # seconds between later pieces
    text: str = ""


READY = ("/health", "/v1/models")  # llama-cpp-python's server answers only the second


@contextmanager
def start(cmd: list[str], port: int, timeout: float = 600.0):
    """Run a server process until the block ends (SIGTERM, then kill). Its log goes to a
    file, not a pipe: an unread pipe fills (llama.cpp's server logs every request) and
    blocks the server."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            yield wait_ready(proc, log, cmd, f"http://127.0.0.1:{port}", timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(proc: subprocess.Popen, log, cmd: list[str], url: str, timeout: float) -> str:
    """Poll READY until one answers 200; the server's log tail if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{cmd[:4]} exited: {log.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[:4]} did not start in {timeout:.0f} s")
        try:
            if any(httpx.get(url + path, timeout=2).status_code == 200 for path in READY):
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.5)


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> RequestTiming:
    sent = time.perf_counter()
    timing, last = None, sent
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            piece = json.loads(line[5:])["choices"][0].get("text") or ""
            if not piece:
                continue
            now = time.perf_counter()
            if timing is None:
                timing = RequestTiming(now - sent)
            else:
                timing.gaps.append(now - last)
            timing.text += piece
            last = now
    return timing or RequestTiming(time.perf_counter() - sent)


def load(url: str, clients: int, requests: int, body: Callable[[int, int], dict]) -> tuple:
    """(seconds of the whole run, timings) with `clients` streaming clients at once."""

    async def client(c: int, http: httpx.AsyncClient) -> list[RequestTiming]:
        return [await _one(http, url, body(c, i)) for i in range(requests)]

    async def run() -> list[RequestTiming]:
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(limits=limits) as http:
            done = await asyncio.gather(*(client(c, http) for c in range(clients)))
        return [t for ts in done for t in ts]

    start_time = time.perf_counter()
    timings = asyncio.run(run())
    return time.perf_counter() - start_time, timings


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


# ── the naive baseline ──────────────────────────────────────────────────────────────────


def naive_server(port: int, model_name: str, threads: int) -> None:
    """transformers' generate behind one lock: requests are answered one at a time."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI
    from starlette.responses import StreamingResponse
    from transformers import TextIteratorStreamer

    from lmforge.hub import load_model, resolve

    torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    model = load_model(model_name, backend="hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(resolve(model_name)))
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    async def completions(request):  # a plain Starlette endpoint: it is given the Request
        body = await request.json()
        ids = tokenizer(body["prompt"], return_tensors="pt")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)

        def work() -> None:
            with lock, torch.inference_mode():
                model.generate(
                    **ids,
                    max_new_tokens=body["max_tokens"],
                    do_sample=False,
                    streamer=streamer,
                    pad_token_id=tokenizer.eos_token_id,
                )

        threading.Thread(target=work, daemon=True).start()

        async def events():
            iterator = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, iterator, None)
                if piece is None:
                    break
                yield f"data: {json.dumps({'choices': [{'text': piece}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app.router.add_route("/v1/completions", completions, methods=["POST"])

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1] == "naive":
        naive_server(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
