"""/v1/completions and /v1/chat/completions: prompt → engine → JSON or an SSE stream.

    body ─► prompt ids ─► Submission (n engine requests) ─┬─► stream: one chunk per step
                                                          └─► else: one response at the end
A streaming client that disconnects cancels its requests at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request as HttpRequest

from lmforge.chat import chat_format
from lmforge.errors import ConfigError, DataError
from lmforge.serve.protocol import (
    FINISH,
    ChatRequest,
    CompletionRequest,
    chat_logprobs,
    completion_logprobs,
    envelope,
    new_id,
    usage,
)
from lmforge.serve.requests import Output
from lmforge.serve.submit import ApiError, ServerState, Submission, sampling_for

Chunk = Callable[[int, Output, bool], dict[str, Any]]  # (choice, output, first) → choice object


async def _collect(sub: Submission, http: HttpRequest) -> dict[int, list[Output]]:
    """Every output of every choice; cancels the requests if the client disconnects."""
    outputs: dict[int, list[Output]] = {}

    async def gather() -> None:
        async for index, out in sub.events():
            outputs.setdefault(index, []).append(out)

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await http.is_disconnected():
                task.cancel()
                raise ApiError(499, "client closed the request")
        task.result()
    finally:
        sub.close()
    return outputs


def _check_failed(outputs: dict[int, list[Output]]) -> None:
    for outs in outputs.values():
        if outs and outs[-1].finish_reason == "error":
            raise ApiError(500, f"generation failed: {outs[-1].error}", "server_error")


def _prompt_tokens(state: ServerState, prompt: Any) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        vocab = state.engine.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise ApiError(400, f"prompt token ids must lie in 0..{vocab - 1}", param="prompt")
        return list(prompt)
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "give one prompt per request (a string)", param="prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string", param="prompt")
    return state.tokenizer.encode(prompt, add_special_tokens=True)  # BOS as the checkpoint adds


async def completions(state: ServerState, body: CompletionRequest, http: HttpRequest) -> Any:
    adapter = state.adapter_of(body.model)
    prompt = _prompt_tokens(state, body.prompt)
    samplings = sampling_for(state, body, len(prompt), body.max_tokens)
    sub = Submission(state)
    sub.submit(prompt, samplings, state.eos, adapter, body.logprobs)
    rid, tok = new_id("cmpl"), state.tokenizer
    echo = tok.decode(prompt) if body.echo else ""

    def choice(index: int, out: Output, first: bool) -> dict[str, Any]:
        text = (echo if first else "") + out.text
        logprobs = completion_logprobs(tok, out.logprobs) if body.logprobs is not None else None
        reason = FINISH.get(out.finish_reason or "", None)
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    kinds = ("text_completion", "text_completion")
    return await _respond(sub, http, body, kinds, rid, len(prompt), choice)


async def _respond(
    sub: Submission,
    http: HttpRequest,
    body: Any,
    kinds: tuple[str, str],
    rid: str,
    prompt_len: int,
    choice: Chunk,
) -> Any:
    """An SSE stream of chunks (kinds[1]), or the whole response (kinds[0]) with usage."""
    if body.stream:
        return _stream(sub, kinds[1], rid, body.model, choice)
    outputs = await _collect(sub, http)
    _check_failed(outputs)
    choices = [_merged(i, outs, choice) for i, outs in sorted(outputs.items())]
    n_out = sum(len(o.token_ids) for outs in outputs.values() for o in outs)
    cached = max((outs[-1].cached_tokens for outs in outputs.values() if outs), default=0)
    return envelope(kinds[0], rid, body.model, choices, usage=usage(prompt_len, n_out, cached))


def _merged(index: int, outs: list[Output], choice: Chunk) -> dict[str, Any]:
    """One choice object from all the outputs of a request (non-streaming)."""
    whole = Output(
        [t for o in outs for t in o.token_ids],
        "".join(o.text for o in outs),
        [p for o in outs for p in o.logprobs],
        outs[-1].finish_reason,
    )
    return choice(index, whole, True)


def _chat_prompt(state: ServerState, body: ChatRequest) -> str:
    messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in body.messages]
    try:
        if body.wants_extensions():
            if state.extensions is None:
                raise ApiError(
                    400,
                    "tools and response_format need lmforge.tools' constrained "
                    "decoding, which this server was started without",
                    param="tools" if body.tools else "response_format",
                )
            return state.extensions.prompt(messages, body.tools or [], body.tool_choice)
        return chat_format(messages, state.tokenizer)
    except (DataError, ConfigError) as e:
        raise ApiError(400, str(e), param="messages") from None


async def chat(state: ServerState, body: ChatRequest, http: HttpRequest) -> Any:
    adapter = state.adapter_of(body.model)
    prompt = state.tokenizer.encode(_chat_prompt(state, body))
    max_tokens = body.max_completion_tokens or body.max_tokens
    samplings = sampling_for(state, body, len(prompt), max_tokens)
    top = (body.top_logprobs or 0) if body.logprobs else None
    ext = state.extensions if body.wants_extensions() else None

    def processor() -> Any:
        if ext is None:
            return None
        return ext.processor(
            body.tools or [], body.tool_choice, body.response_format, samplings[0].max_new_tokens
        )

    sub = Submission(state)
    sub.submit(prompt, samplings, state.chat_eos, adapter, top, processor)
    rid, tok = new_id("chatcmpl"), state.tokenizer

    def choice(index: int, out: Output, first: bool) -> dict[str, Any]:
        reason = FINISH.get(out.finish_reason or "", None)
        message: dict[str, Any] = {"role": "assistant", "content": out.text}
        if ext is not None and out.finish_reason is not None and not body.stream:
            parsed = ext.parse(out.text, body.tools or [])
            message = {"role": "assistant", "content": parsed.content}
            if parsed.tool_calls:
                message["tool_calls"], reason = parsed.tool_calls, "tool_calls"
        entry: dict[str, Any] = {"index": index, "finish_reason": reason}
        if body.stream:
            entry["delta"] = (
                {"role": "assistant", "content": out.text} if first else {"content": out.text}
            )
        else:
            entry["message"] = message
        entry["logprobs"] = chat_logprobs(tok, out.logprobs) if top is not None else None
        return entry

    kinds = ("chat.completion", "chat.completion.chunk")
    return await _respond(sub, http, body, kinds, rid, len(prompt), choice)


def _stream(sub: Submission, kind: str, rid: str, model: str, choice: Chunk) -> Any:
    """Server-sent events, `data: {json}` per chunk and `data: [DONE]` at the end. A plain
    streaming response: a shutdown lets it run to its end (uvicorn drains open responses)."""
    from starlette.responses import StreamingResponse

    async def events() -> AsyncIterator[str]:
        started: set[int] = set()
        try:
            async for index, out in sub.events():
                if out.finish_reason == "error":
                    err = {"error": {"message": out.error, "type": "server_error"}}
                    yield f"data: {json.dumps(err)}\n\n"
                    continue
                first = index not in started
                started.add(index)
                if out.text or out.finish_reason or first:
                    body = envelope(kind, rid, model, [choice(index, out, first)])
                    yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects (the task is cancelled)
            sub.close()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
