"""The OpenAI-compatible HTTP app (FastAPI; the `serve` extra).

    GET  /                     the chat page (page.html)
    GET  /health               {"status": "ok" | "draining"}      (no API key needed)
    GET  /metrics              Prometheus text
    GET  /v1/models            the base, each BASE:ADAPTER, the embedding model
    POST /v1/completions       text in, text out (stream: SSE)
    POST /v1/chat/completions  messages in, a message out (stream: SSE)
    POST /v1/embeddings        sentence embeddings (all-MiniLM-L6-v2)

Every error is an OpenAI error body with the right status; no request can reach a 500 by
what it sends (tests/serve/test_fuzz.py throws malformed and hostile requests at it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest

from lmforge.serve.limits import Guard
from lmforge.serve.metrics import Throughput, render
from lmforge.serve.protocol import ChatRequest, CompletionRequest, EmbeddingRequest, error_body
from lmforge.serve.routes import chat, completions
from lmforge.serve.submit import ApiError, ServerState


async def parse(http: HttpRequest, model: type[BaseModel]) -> Any:
    """The body as `model`: 400 for bytes that are not a JSON object, 422 for bad fields."""
    try:
        raw = await http.body()
    except ClientDisconnect:
        raise ApiError(400, "the request body was not received whole") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(
            422, f"{where}: {first['msg']}" if where else first["msg"], param=where
        ) from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None


def _encoded(vector: Any, encoding: str) -> Any:
    """A vector as a list of floats, or (base64) its little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(vector.float().numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()


async def embeddings(state: ServerState, http: HttpRequest) -> dict[str, Any]:
    """POST /v1/embeddings: unit vectors of the sentence encoder, floats or base64."""
    body = await parse(http, EmbeddingRequest)
    if state.embed is None or body.model != state.embedding_model:
        message = (
            f"no embedding model {body.model!r} here; served: {state.embedding_model or 'none'}"
        )
        raise ApiError(404, message, param="model")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > 256 or any(not isinstance(t, str) or not t for t in texts):
        raise ApiError(400, "input: 1 to 256 non-empty strings", param="input")
    vectors, n = await asyncio.to_thread(state.embed, texts)
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": n, "total_tokens": n}
    return {"object": "list", "data": data, "model": body.model, "usage": usage}


def create_app(state: ServerState, api_key: str = "") -> Any:
    """The ASGI app for `state` (its engine's thread is started and stopped with the app)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    @asynccontextmanager
    async def lifespan(app: Any):
        if state.engine._thread is None:
            state.engine.start()
        yield
        state.draining = True
        await asyncio.to_thread(state.engine.stop, 30.0)  # finish what is running

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    throughput = Throughput()

    @app.exception_handler(ApiError)
    async def api_error(_: HttpRequest, e: ApiError) -> JSONResponse:
        body = error_body(e.message, e.kind, e.param)
        return JSONResponse(body, status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: HttpRequest, e: Exception) -> JSONResponse:
        body = error_body(f"internal error: {type(e).__name__}", "server_error")
        return JSONResponse(body, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return files("lmforge.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "draining" if state.draining else "ok", "model": state.name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return render(state.engine, throughput, state.in_flight, state.rejected)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        adapters = state.engine.adapters.names() if state.engine.adapters is not None else []
        ids = [state.name] + [f"{state.name}:{a}" for a in adapters]
        ids += [state.embedding_model] if state.embed is not None else []
        now = int(time.time())
        data = [{"id": i, "object": "model", "created": now, "owned_by": "lmforge"} for i in ids]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def post_completions(http: HttpRequest) -> Any:
        return await completions(state, await parse(http, CompletionRequest), http)

    @app.post("/v1/chat/completions")
    async def post_chat(http: HttpRequest) -> Any:
        return await chat(state, await parse(http, ChatRequest), http)

    app.post("/v1/embeddings")(partial(embeddings, state))
    return Guard(app, state.limits, api_key)
