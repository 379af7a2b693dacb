"""From a validated API body to engine requests, and their outputs back into asyncio.

body ─► limits (prompt tokens, max_tokens, n, in-flight, queue) ─► n engine Requests
     ─► engine thread emits Outputs ─► loop.call_soon_threadsafe ─► Submission's queue
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.model.generate import SamplingConfig
from lmforge.serve.engine import Engine
from lmforge.serve.extensions import ChatExtensions
from lmforge.serve.limits import Limits
from lmforge.serve.requests import LogitsProcessor, Output, Request
from lmforge.tokenizer import Tokenizer


class ApiError(Exception):
    """A refusal with its HTTP status and OpenAI error type."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


@dataclass
class ServerState:
    """Everything the routes share."""

    engine: Engine
    tokenizer: Tokenizer
    name: str  # the served model's id (`NAME` and `NAME:ADAPTER` in requests)
    limits: Limits = field(default_factory=Limits)
    defaults: dict[str, Any] = field(default_factory=dict)  # the checkpoint's sampling defaults
    eos: list[int] = field(default_factory=list)  # ids that end a completion
    chat_eos: list[int] = field(default_factory=list)  # ids that end an assistant turn
    extensions: ChatExtensions | None = None
    embed: Callable[[list[str]], tuple[Any, int]] | None = None  # texts → (N, D) vectors, tokens
    embedding_model: str = ""  # its id in /v1/models
    in_flight: int = 0
    rejected: int = 0
    draining: bool = False

    def adapter_of(self, model: str) -> str:
        """`NAME` → "" (the base), `NAME:ADAPTER` → ADAPTER; 404 for anything else."""
        base, sep, adapter = model.partition(":")
        known = self.engine.adapters.names() if self.engine.adapters is not None else []
        if base == self.name and (not sep or adapter in known):
            return adapter
        served = ", ".join([self.name] + [f"{self.name}:{a}" for a in known])
        raise ApiError(
            404,
            f"model {model!r} is not served here; served: {served}",
            "invalid_request_error",
            "model",
        )


def sampling_for(
    state: ServerState, body: Any, prompt_len: int, max_tokens: int | None
) -> list[SamplingConfig]:
    """One SamplingConfig per choice (n), within the limits; 400 naming the field otherwise."""
    limits, context = state.limits, state.engine.model.config.max_seq_len
    if body.n > limits.max_n:
        raise ApiError(
            400, f"n={body.n} is more than this server allows ({limits.max_n})", param="n"
        )
    most = min(limits.max_prompt_tokens or context - 1, context - 1)
    if prompt_len > most:
        message = f"the prompt has {prompt_len} tokens; at most {most} are accepted"
        raise ApiError(400, message, param="messages")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} is more than this server allows ({limits.max_tokens})",
            param="max_tokens",
        )
    room = context - prompt_len
    if max_tokens is not None and max_tokens > room:
        raise ApiError(
            400,
            f"{prompt_len} prompt tokens + max_tokens={max_tokens} exceed the "
            f"model's context of {context} tokens",
            param="max_tokens",
        )
    given = body.model_fields_set
    temperature = (
        body.temperature if "temperature" in given else state.defaults.get("temperature", 1.0)
    )
    top_p = body.top_p if "top_p" in given else state.defaults.get("top_p", 1.0)
    return [
        SamplingConfig(
            max_new_tokens=max_tokens or min(limits.max_tokens, room),
            temperature=temperature,
            top_p=top_p,
            seed=None if body.seed is None else body.seed + i,
            stop=list(body.stop or []),
        )
        for i in range(body.n)
    ]


class Submission:
    """The engine requests of one API call; their outputs arrive on the event loop."""

    def __init__(self, state: ServerState) -> None:
        self.state, self.loop = state, asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()
        self.requests: list[Request] = []

    def admit(self) -> None:
        """429 when the server is full (or shutting down: 503)."""
        s, limits = self.state, self.state.limits
        if s.draining:
            raise ApiError(503, "the server is shutting down", "server_error")
        queued = len(s.engine.waiting)
        if s.in_flight >= limits.max_concurrent or queued >= limits.max_queue:
            s.rejected += 1
            raise ApiError(
                429,
                f"the server is busy ({s.in_flight} requests in flight, {queued} queued); retry "
                "shortly",
                "rate_limit_error",
                headers={"Retry-After": str(limits.retry_after_s)},
            )

    def submit(
        self,
        prompt: list[int],
        samplings: list[SamplingConfig],
        eos: list[int],
        adapter: str,
        logprobs: int | None,
        processor: Callable[[], LogitsProcessor | None] = lambda: None,
    ) -> None:
        self.admit()
        for i, sampling in enumerate(samplings):
            emit = self._emitter(i)
            request = Request(prompt, sampling, emit, eos, adapter, logprobs, processor())
            self.requests.append(self.state.engine.submit(request))
        self.state.in_flight += 1

    def _emitter(self, index: int) -> Callable[[Output], None]:
        def emit(out: Output) -> None:  # runs on the engine's thread
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, out))

        return emit

    async def events(self) -> AsyncIterator[tuple[int, Output]]:
        """(choice index, output) until every choice has finished."""
        open_choices = len(self.requests)
        while open_choices:
            index, out = await self.queue.get()
            open_choices -= out.finish_reason is not None
            yield index, out

    def close(self) -> None:
        """Cancel whatever still runs (the client went away) and release the slot."""
        for request in self.requests:
            self.state.engine.cancel(request)
        if self.requests:
            self.state.in_flight -= 1
            self.requests = []
