"""Where tool calls and constrained JSON plug into chat completions.

    request.tools / response_format ─► ChatExtensions.prompt(messages, tools, tool_choice)
                                    ─► ChatExtensions.processor(...)   (a grammar mask)
                                    ─► engine ─► ChatExtensions.parse(text) ─► tool_calls

The server holds at most one `ChatExtensions`; without one, a request that sends `tools` or a
`response_format` other than "text" is refused (400) rather than answered unconstrained.
lmforge.tools (call formats, parsing, constrained decoding) provides the implementation; its
`ToolPrompt.render`/`parse` and `GrammarConstraint` fit these three methods as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmforge.serve.requests import LogitsProcessor


@dataclass
class ParsedReply:
    content: str | None  # the text of the reply outside any tool call
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool_calls entries


class ChatExtensions(Protocol):
    def prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        tool_choice: str | Mapping[str, Any] | None,
    ) -> str:
        """The prompt text of a conversation in which the model may call `tools`."""
        ...

    def processor(
        self,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: str | Mapping[str, Any] | None,
        response_format: Mapping[str, Any] | None,
        max_tokens: int,
    ) -> LogitsProcessor | None:
        """A logits processor that keeps the reply within the format asked (None: free text)."""
        ...

    def parse(self, text: str, tools: Sequence[Mapping[str, Any]]) -> ParsedReply:
        """The reply's text and the tool calls it makes."""
        ...
