"""Tool calls in chat completions: lmforge.tools behind the server's ChatExtensions seam.

    messages + tools ─► ToolPrompt.render: the model's own template where it renders tools
                        (Qwen2.5, Llama 3.x), else the Hermes-style default (SmolLM2)
    tool_choice      ─► "auto" (or unset): free text, calls parsed from it afterwards
                        "required", {"type": "function", "function": {"name": N}}: the
                        reply is one call, generated under its tools' JSON Schema (a
                        GrammarConstraint on the request's own row), then the turn ends
                        "none": the tools are not shown to the model
    reply text       ─► CallFormat.parse ─► OpenAI `tool_calls`, finish_reason "tool_calls"

A streamed reply is sent as text (its calls are not split into deltas). `response_format`
other than "text" is refused with 400: only tool calls are constrained here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.errors import ConfigError
from lmforge.serve.extensions import ParsedReply
from lmforge.serve.requests import LogitsProcessor
from lmforge.serve.submit import ApiError
from lmforge.tokenizer import Tokenizer
from lmforge.tools.constrained import Grammar, GrammarConstraint, call_pattern, compile_grammar
from lmforge.tools.formats import ToolPrompt


def chosen_tools(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any] | None
) -> list[Mapping[str, Any]] | None:
    """The tools a reply must call one of (None: the model may answer in text)."""
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        return list(tools)
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, Mapping) else None
    if name is None:
        raise ApiError(
            400,
            f"tool_choice {tool_choice!r}: use auto, none, required or "
            '{"type": "function", "function": {"name": NAME}}',
            param="tool_choice",
        )
    named = [t for t in tools if t.get("function", {}).get("name") == name]
    if not named:
        raise ApiError(
            400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
        )
    return named


class ToolCalls:
    """The server's ChatExtensions for one tokenizer; `eos` ends an assistant turn."""

    def __init__(self, tokenizer: Tokenizer, eos: Sequence[int]) -> None:
        self.tokenizer, self.eos = tokenizer, list(eos)
        self.prompts = ToolPrompt(tokenizer)
        self.grammars: dict[str, Grammar] = {}  # call pattern → compiled (tools repeat)

    def prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        tool_choice: str | Mapping[str, Any] | None,
    ) -> str:
        return self.prompts.render(messages, [] if tool_choice == "none" else list(tools))

    def processor(
        self,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: str | Mapping[str, Any] | None,
        response_format: Mapping[str, Any] | None,
        max_tokens: int,
    ) -> LogitsProcessor | None:
        kind = (response_format or {}).get("type", "text")
        if kind != "text":
            message = f"response_format {kind!r} is not supported; ask for text"
            raise ApiError(400, message, param="response_format")
        chosen = chosen_tools(tools, tool_choice)
        if chosen is None:
            return None
        pattern = call_pattern(chosen, self.prompts.format)
        if pattern not in self.grammars:
            self.grammars[pattern] = compile_grammar(pattern, self.tokenizer)
        try:
            return GrammarConstraint(self.grammars[pattern], self.eos, max_tokens)
        except ConfigError as e:
            raise ApiError(400, str(e), param="max_tokens") from None

    def parse(self, text: str, tools: Sequence[Mapping[str, Any]]) -> ParsedReply:
        reply = self.prompts.parse(text)
        calls = [call.to_openai() for call in reply.calls]
        return ParsedReply(reply.content or (None if calls else ""), calls)
