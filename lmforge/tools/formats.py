"""How tool calls look in text: writing them into prompts, reading them out of replies.

Conversations use the OpenAI shapes the rest of the ecosystem speaks:

    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function",
        "function": {"name": "calculator", "arguments": "{\"expression\": \"2+2\"}"}}]}
    {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "4"}

A model whose chat template renders tools (Qwen2, Llama 3.x) gets them through its own
template, exactly as transformers' `apply_chat_template(messages, tools=...)` renders
them. A template that ignores tools (SmolLM2, ChatML, plain) gets the default format,
Hermes-style text inside the model's own template:

    system     <the system prompt>\\n\\n<TOOLS_PROMPT with one JSON description per line>
    assistant  <tool_call>\\n{"name": "calculator", "arguments": {"expression": "2+2"}}
               \\n</tool_call>
    user       <tool_response>\\n4\\n</tool_response>          (consecutive results merged)

CALL_FORMATS holds the two ways replies carry calls: `hermes` (any number of
<tool_call> blocks among text; Qwen2 and the default) and `llama3` (the whole reply is a
JSON object {"name", "parameters"}, or several separated by ";"). Parsing never raises: a
malformed call becomes an error message for the model's next turn.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmforge.chat import chat_format, chat_template_for, render
from lmforge.errors import ConfigError, DataError
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer
from lmforge.tools.registry import ToolCall

TOOLS_PROMPT = (
    "You can use tools. Their descriptions, one JSON object per line:\n<tools>\n{tools}\n"
    "</tools>\nTo use a tool, reply with one block per call:\n<tool_call>\n"
    '{{"name": "TOOL NAME", "arguments": {{ARGUMENTS AS JSON}}}}\n</tool_call>\n'
    "Each result comes back in <tool_response></tool_response>. When you know the answer, "
    "reply with it and no tool call."
)


@dataclass
class ParsedReply:
    content: str  # the reply's text outside its calls
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # malformed calls, in words for the model


@dataclass(frozen=True)
class CallFormat:
    opener: str  # text that begins a call
    closer: str  # text that ends a call
    key: str  # the arguments' key in the call object
    parse: Callable[[str], ParsedReply]
    marker: str  # what a template's rendering of a call contains in this format
    trigger: str  # text by which a reply shows it begins a call
    only_first: bool  # the trigger counts only at the start of the reply
    doc: str = ""

    def write(self, call: ToolCall) -> str:
        args, _ = call.parsed()
        body = {"name": call.name, self.key: args if args is not None else call.arguments}
        return self.opener + json.dumps(body, ensure_ascii=False) + self.closer


def _decode_call(text: str, number: int) -> tuple[ToolCall | None, str | None]:
    """One call object; (None, the reason) when it is not one."""
    text = text.strip()
    shown = text if len(text) <= 80 else text[:77] + "..."
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"tool call {number} is not valid JSON ({e.msg} at character {e.pos}): {shown}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, f'tool call {number} must be {{"name": ..., "arguments": {{...}}}}: {shown}'
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(obj["name"], args if args is not None else {}, id=f"call_{number}"), None


def parse_hermes(text: str) -> ParsedReply:
    """<tool_call>{...}</tool_call> blocks anywhere in the reply (an unclosed last one too)."""
    reply = ParsedReply("")
    blocks = list(re.finditer(r"<tool_call>(.*?)(?:</tool_call>|\Z)", text, re.S))
    for number, block in enumerate(blocks):
        call, error = _decode_call(block.group(1), number)
        reply.calls += [call] if call else []
        reply.errors += [error] if error else []
    reply.content = re.sub(r"<tool_call>.*?(?:</tool_call>|\Z)", "", text, flags=re.S).strip()
    return reply


def parse_llama3(text: str) -> ParsedReply:
    """A reply that is one or more JSON call objects (after an optional <|python_tag|>)."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return ParsedReply(text.strip())
    reply, decoder, pos, number = ParsedReply(""), json.JSONDecoder(), 0, 0
    while pos < len(body):
        try:
            _, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            end = len(body)  # the rest is one malformed call
        call, error = _decode_call(body[pos:end], number)
        reply.calls += [call] if call else []
        reply.errors += [error] if error else []
        pos, number = end, number + 1
        while pos < len(body) and body[pos] in "; \n\t":
            pos += 1
    return reply


CALL_FORMATS: Registry[CallFormat] = Registry("tool-call format")
CALL_FORMATS.add(
    "hermes",
    CallFormat("<tool_call>\n", "\n</tool_call>", "arguments", parse_hermes, "<tool_call>",
               "<tool_call>", False, "<tool_call> JSON blocks among text (Qwen2, the default)"),
)  # fmt: skip
CALL_FORMATS.add(
    "llama3",
    CallFormat("", "", "parameters", parse_llama3, '"parameters": ', "{", True,
               'the reply is {"name": ..., "parameters": {...}} (Llama 3.x)'),
)  # fmt: skip
DEFAULT_FORMAT = "hermes"


# --- conversations --------------------------------------------------------------------------


def _call_of(entry: Mapping[str, Any] | ToolCall) -> ToolCall:
    return entry if isinstance(entry, ToolCall) else ToolCall.from_openai(entry)


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that renders tools: each call as {"type": "function",
    "function": {"name", "arguments": {...}}} with its arguments parsed, as templates expect."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for entry in message["tool_calls"]:
                call = _call_of(entry)
                args, _ = call.parsed()
                function = {
                    "name": call.name,
                    "arguments": args if args is not None else call.arguments,
                }
                calls.append({"id": call.id, "type": "function", "function": function})
            message["tool_calls"] = calls
        out.append(message)
    return out


def plain_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], fmt: CallFormat
) -> list[dict[str, str]]:
    """The default format: tools in the system prompt, calls and results as plain text."""
    out: list[dict[str, str]] = []
    if tools:
        block = TOOLS_PROMPT.format(
            tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        )
        first = messages[0] if messages else {}
        system = (first.get("content") or "") if first.get("role") == "system" else ""
        out.append({"role": "system", "content": (system + "\n\n" if system else "") + block})
        messages = messages[1:] if first.get("role") == "system" else messages
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = [fmt.write(_call_of(c)) for c in message["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join([content, *calls]).strip()})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_resp"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response})
        else:
            out.append({"role": role, "content": content})
    return out


# --- one model's way with tools ---------------------------------------------------------------

PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "lmforge_probe",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
    },
}
PROBE_MESSAGES = [
    {"role": "user", "content": "probe"},
    {
        "role": "assistant",
        "tool_calls": [ToolCall("lmforge_probe", {"x": 1}, "call_0").to_openai()],
    },
    {"role": "tool", "tool_call_id": "call_0", "name": "lmforge_probe", "content": "1"},
]


@functools.lru_cache(maxsize=32)
def native_format(source: str) -> str | None:
    """The call format of a template that renders tools itself; None if it does not."""
    try:
        text = render(source, template_messages(PROBE_MESSAGES), tools=[PROBE_TOOL])
    except (ConfigError, DataError):
        return None  # e.g. a template that reads every message's content
    if "lmforge_probe" not in text or "Probe." not in text:
        return None
    return next((n for n in CALL_FORMATS if CALL_FORMATS.get(n).marker in text), None)


class ToolPrompt:
    """Renders conversations with tools for one tokenizer's chat format and parses replies.

    `native` names the call format when the model's template renders tools itself;
    otherwise calls are written in `call_format` (default hermes) as plain text."""

    def __init__(
        self, tokenizer: Tokenizer, template: str | None = None, call_format: str | None = None
    ) -> None:
        self.tokenizer, self.template = tokenizer, template
        self.native = native_format(chat_template_for(tokenizer, template))
        self.format = CALL_FORMATS.get(self.native or call_format or DEFAULT_FORMAT)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] = (),
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """The prompt text of a conversation in which the model may call `tools`."""
        if self.native:
            return chat_format(
                template_messages(messages),
                self.tokenizer,
                add_generation_prompt=add_generation_prompt,
                template=self.template,
                tools=list(tools) or None,
                **variables,
            )
        plain = plain_messages(messages, list(tools), self.format)
        return chat_format(
            plain,
            self.tokenizer,
            add_generation_prompt=add_generation_prompt,
            template=self.template,
        )

    def parse(self, text: str) -> ParsedReply:
        return self.format.parse(text)
