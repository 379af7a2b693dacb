"""Safety limits of the HTTP server, and the ASGI layer that enforces the first of them.

    request ─► body size (413) ─► API key (401) ─► JSON and fields (400 / 422)
            ─► model known (404) ─► prompt tokens, max_tokens, n (400)
            ─► in-flight and queued requests (429 + Retry-After) ─► the engine

Every refusal is an OpenAI-style error body {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lmforge.errors import ConfigError

OPEN_PATHS = ("/health",)  # answered without the API key (load balancers probe it)


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000  # largest request body accepted (413 above it)
    max_prompt_tokens: int = 0  # longest prompt in tokens; 0 = the context less one
    max_tokens: int = 512  # most new tokens one choice may ask for (and the default)
    max_n: int = 4  # most choices (n) per request
    max_concurrent: int = 32  # generation requests accepted at once (running or queued)
    max_queue: int = 64  # requests waiting for the engine before new ones get 429
    retry_after_s: int = 1  # Retry-After of a 429

    def validate(self) -> None:
        for name in ("max_body_bytes", "max_tokens", "max_n", "max_concurrent", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name} must be at least 1, got {getattr(self, name)}",
                    fix=f"raise {{limits.{name}}}",
                )


def error_response(status: int, message: str, kind: str, headers: dict | None = None) -> tuple:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return status, body.encode(), headers or {}


ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class Guard:
    """ASGI middleware: body size and Bearer API key, before any route runs."""

    def __init__(self, app: ASGIApp, limits: Limits, api_key: str) -> None:
        self.app, self.limits, self.api_key = app, limits, api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await _send(send, *refusal)
        received, limit = 0, self.limits.max_body_bytes
        too_large = False

        async def counted() -> dict[str, Any]:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def watched_send(message: dict) -> None:
            nonlocal started
            if too_large and not started:
                started = True
                await _send(send, *_too_large(limit))
                return
            if not too_large:
                started = started or message["type"] == "http.response.start"
                await send(message)

        await self.app(scope, counted, watched_send)

    def _refusal(self, scope: dict, headers: dict[str, str]) -> tuple | None:
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return error_response(400, "Content-Length is not a number", "invalid_request_error")
        if int(length) > self.limits.max_body_bytes:
            return _too_large(self.limits.max_body_bytes)
        if self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get("authorization", "")
            expected = f"Bearer {self.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                    "authentication_error",
                    {"www-authenticate": "Bearer"},
                )
        return None


def _too_large(limit: int) -> tuple:
    return error_response(
        413,
        f"request body larger than {limit} bytes (limits.max_body_bytes)",
        "invalid_request_error",
    )


async def _send(send: Callable, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
