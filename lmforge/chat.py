"""Chat templates: a list of messages → the one prompt string a chat model was trained on.

A chat model learns its conversations in one fixed textual format; prompting it in any
other wastes what instruction tuning taught it. Models ship that format as a Jinja
template (the `transformers` convention), which we render the same way `transformers`
does — sandboxed Jinja, `trim_blocks` and `lstrip_blocks`, the `raise_exception` helper —
so that the prompt string is identical to `tokenizer.apply_chat_template(...)`:

    messages ──validate──► [{role, content}, ...]
                                  │
    tokenizer.chat_template ──────┤  (else the `template` asked for, else ChatML)
                                  ▼
                       Jinja render(messages, add_generation_prompt, bos_token, eos_token)
                                  │
                                  ▼
    "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"  ──encode──► ids ──generate──►
                                                                   until chat_stop_tokens

Built-in templates (TEMPLATES):
  chatml  <|im_start|>ROLE\\nCONTENT<|im_end|>\\n per message; the generation prompt is
          "<|im_start|>assistant\\n". Native tokenizers reserve both markers as special
          tokens, so each is one id. The default.
  plain   "System: ...", "User: ...", "Assistant: ...", "Tool: ..." lines, a blank line after
          the system message; the generation prompt is "Assistant:" (no space: byte-level BPE
          puts the space in the next word). For models trained on no chat format at all.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lmforge.errors import ConfigError, DataError
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "tool")

# Tokens that close a turn in the common chat formats (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # Jinja source, rendered like a transformers chat template
    stop: tuple[str, ...] = ()  # text that ends an assistant turn in this format
    doc: str = ""  # one line for listings


CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ message['role'] | capitalize + ': ' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TEMPLATES: Registry[ChatTemplate] = Registry("chat template")
TEMPLATES.add("chatml", ChatTemplate(CHATML, ("<|im_end|>",), "ChatML markers (the default)"))
TEMPLATES.add("plain", ChatTemplate(PLAIN, ("\nUser:",), "'User: ...' / 'Assistant: ...' lines"))
DEFAULT_TEMPLATE = "chatml"


class _Rejected(Exception):
    """raise_exception(...) called by a template: the conversation does not fit its format."""


def _raise_exception(message: str) -> None:
    raise _Rejected(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # templates that print "today's date" (Llama 3.1)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """The sandboxed Jinja environment chat templates are written against."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # {% generation %}...{% endgeneration %} marks assistant text for training masks in
        # some templates; rendering only needs the text inside.
        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(
            f"chat template line {e.lineno}: {e.message}; fix the Jinja source "
            f"or use a registered template ({', '.join(TEMPLATES.names())})"
        ) from None


def template_source(template: str) -> str:
    """The Jinja source of a registered template name, or `template` itself if it is Jinja."""
    if template in TEMPLATES:
        return TEMPLATES.get(template).source
    if "{{" in template or "{%" in template:
        return template
    raise ConfigError(
        f"unknown chat template {template!r}: neither a registered name "
        f"({', '.join(TEMPLATES.names())}) nor Jinja source"
    )


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render `messages` with a chat template (Jinja source or a registered name).

    `extra` reaches the template as further variables. Messages are passed as plain dicts
    without their None-valued keys, and `tools`/`documents` default to None (templates test
    `tools is not none`), as transformers passes them.
    """
    import jinja2

    compiled = _compile(template_source(template))
    plain = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    variables = {"tools": None, "documents": None, **extra}
    try:
        return compiled.render(
            messages=plain,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **variables,
        )
    except _Rejected as e:
        raise DataError(f"the chat template rejects this conversation: {e}") from None
    except jinja2.TemplateError as e:  # undefined variables, sandbox violations
        raise ConfigError(f"chat template failed to render: {e}") from None


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Raise DataError naming the message index and field of the first malformed message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise DataError(f"messages must be a list of {{role, content}} dicts, got {messages!r:.80}")
    if not messages:
        raise DataError("messages is empty; give at least one {role, content} message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"messages[{i}] must be a mapping with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
        if role == "system" and i > 0:
            raise DataError(f"messages[{i}].role is 'system'; a system message may only be first")
        content = message.get("content")
        calls = message.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, Sequence)):
            raise DataError(f"messages[{i}].tool_calls must be a list on an assistant message")
        if not isinstance(content, str) and not (calls and content is None):
            kind = type(content).__name__
            raise DataError(f"messages[{i}].content must be a string, got {kind}")


def chat_template_for(tokenizer: Tokenizer, template: str | None = None) -> str:
    """The template a conversation is rendered with: the model's own when its tokenizer
    carries one; else `template` (a registered name or Jinja source); else ChatML."""
    if tokenizer.chat_template is not None:
        return tokenizer.chat_template
    return template_source(template if template is not None else DEFAULT_TEMPLATE)


def chat_format(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    add_generation_prompt: bool = True,
    template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **variables: Any,
) -> str:
    """The prompt string for `messages` in the model's chat format (see `chat_template_for`).

    With add_generation_prompt, the text ends where the assistant's reply begins. `tools`
    (OpenAI `tools` entries) and `variables` reach the template as transformers'
    `apply_chat_template(tools=..., **kwargs)` passes them; an assistant message may carry
    `tool_calls` instead of content.
    """
    validate_messages(messages)
    return render(
        chat_template_for(tokenizer, template),
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=tokenizer.bos_token or "",
        eos_token=_token(tokenizer, tokenizer.eos_id),
        tools=list(tools) if tools is not None else None,
        **variables,
    )


def chat_stop_tokens(tokenizer: Tokenizer) -> list[int]:
    """The ids that end an assistant turn: eos and the end-of-turn markers the vocabulary holds."""
    ids = [tokenizer.eos_id] + [tokenizer.token_to_id(t) for t in END_OF_TURN_TOKENS]
    return list(dict.fromkeys(i for i in ids if i is not None))


def chat_stop_strings(tokenizer: Tokenizer, template: str | None = None) -> list[str]:
    """Text that ends an assistant turn: the stop tokens as strings, plus the stop text of a
    registered template in use (for formats without markers, such as "plain")."""
    strings = [_token(tokenizer, i) for i in chat_stop_tokens(tokenizer)]
    source = chat_template_for(tokenizer, template)
    for name in TEMPLATES:
        if TEMPLATES.get(name).source == source:
            strings += TEMPLATES.get(name).stop
    return list(dict.fromkeys(s for s in strings if s))


def _token(tokenizer: Tokenizer, token_id: int | None) -> str:
    return "" if token_id is None else tokenizer.id_to_token(token_id) or ""
