"""The chat model an agent talks to: messages and tools in, one reply (text and calls) out.

    ChatModel.reply(messages, tools, tool_choice) ─► Reply(text, content, calls, errors)

`tool_choice` is the OpenAI notion: "auto" (the model decides), "required" (the reply is
one call), "none" (no call). LocalChatModel drives any model lmforge loads (native or
transformers) through its own chat template (tools/formats.py) and `generate`:

    auto      free text; when the reply begins a call (the format's trigger, e.g.
              "<tool_call>") and `constrain` is on, the call is generated again from the
              text before the trigger under its JSON Schema (tools/constrained.py)
    required  with `constrain`, the whole reply is one call under the schema; without,
              the reply is prefilled with the call's opener and then sampled freely
    none      free text (tools are still described to the model)

ScriptedModel replays written replies: agents are tested with it deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from torch import nn

from lmforge.chat import chat_stop_strings, chat_stop_tokens
from lmforge.errors import ConfigError
from lmforge.model.generate import SamplingConfig, generate
from lmforge.tokenizer import Tokenizer
from lmforge.tools.constrained import GrammarConstraint, call_pattern, compile_grammar
from lmforge.tools.formats import CALL_FORMATS, CallFormat, ParsedReply, ToolPrompt
from lmforge.tools.registry import ToolCall

TOOL_CHOICES = ("auto", "required", "none")
Messages = Sequence[Mapping[str, Any]]


@dataclass
class Reply:
    text: str  # everything the model wrote
    content: str  # the text outside its calls (the thought, or the answer)
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # malformed calls, for the model to read

    @classmethod
    def parsed(cls, text: str, parse: Callable[[str], ParsedReply]) -> Reply:
        out = parse(text)
        return cls(text, out.content, out.calls, out.errors)

    def message(self, prefix: str = "call") -> dict[str, Any]:
        """The assistant message (OpenAI form); calls get ids `{prefix}_{i}`."""
        for i, call in enumerate(self.calls):
            call.id = f"{prefix}_{i}"
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            message["tool_calls"] = [c.to_openai() for c in self.calls]
        return message


class ChatModel(Protocol):
    def reply(
        self, messages: Messages, tools: Sequence[Mapping[str, Any]], tool_choice: str = "auto"
    ) -> Reply: ...


class ScriptedModel:
    """Replies from a script: raw reply texts, or functions of the messages returning one."""

    def __init__(
        self, script: Sequence[str | Callable[[Messages], str]], call_format: str = "hermes"
    ) -> None:
        self.script = list(script)
        self.parse = CALL_FORMATS.get(call_format).parse
        self.seen: list[list[dict[str, Any]]] = []  # the messages of every call, for tests

    def reply(
        self, messages: Messages, tools: Sequence[Mapping[str, Any]], tool_choice: str = "auto"
    ) -> Reply:
        if len(self.seen) >= len(self.script):
            raise ConfigError(f"the script has {len(self.script)} replies; a further one was asked")
        entry = self.script[len(self.seen)]
        self.seen.append([dict(m) for m in messages])
        return Reply.parsed(entry(messages) if callable(entry) else entry, self.parse)


class LocalChatModel:
    """A loaded model and its tokenizer as a ChatModel (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        sampling: SamplingConfig | None = None,
        *,
        template: str | None = None,
        constrain: bool = True,
        call_format: str | None = None,
        batch: int = 8,
    ) -> None:
        self.model, self.tokenizer, self.constrain, self.batch = model, tokenizer, constrain, batch
        self.prompt = ToolPrompt(tokenizer, template, call_format)
        self.sampling = sampling or SamplingConfig(max_new_tokens=128, temperature=0.0)
        stops = chat_stop_strings(tokenizer, template)
        self.free = replace(self.sampling, stop=[*self.sampling.stop, *stops])
        self.eos = chat_stop_tokens(tokenizer)

    def _generate(
        self, prompts: list[str], config: SamplingConfig, processor: Any = None
    ) -> list[tuple[str, str]]:
        """(the text, what followed it when a stop string cut it off) per prompt, in
        batches of `batch`."""
        out = []
        for start in range(0, len(prompts), self.batch):
            results = generate(
                self.model,
                [self.tokenizer.encode(p) for p in prompts[start : start + self.batch]],
                config,
                eos_token_id=self.eos,
                pad_token_id=self.tokenizer.pad_id or 0,
                decode=self.tokenizer.decode,
                truncate=True,
                logits_processor=processor() if processor else None,
            )
            for r in results:
                text = r.text or ""
                out.append((text, self.tokenizer.decode(r.token_ids)[len(text) :]))
        return out

    def calls(self, prompts: list[str], tools: Sequence[Mapping[str, Any]]) -> list[str]:
        """One call continuing each prompt: under the tools' schema with `constrain`, else
        the format's opener followed by free text."""
        if not self.constrain:
            opener = self.prompt.format.opener
            return [opener + t for t, _ in self._generate([p + opener for p in prompts], self.free)]
        grammar = compile_grammar(call_pattern(tools, self.prompt.format), self.tokenizer)
        budget = self.sampling.max_new_tokens
        fresh = lambda: GrammarConstraint(grammar, self.eos, budget)  # noqa: E731 - per batch
        return [t for t, _ in self._generate(prompts, replace(self.sampling, stop=[]), fresh)]

    def replies(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[Mapping[str, Any]],
        tool_choice: str = "auto",
    ) -> list[Reply]:
        """The replies to several conversations, generated in batches."""
        if tool_choice not in TOOL_CHOICES:
            raise ConfigError(f"tool_choice {tool_choice!r}: choose from {', '.join(TOOL_CHOICES)}")
        prompts = [self.prompt.render(m, tools) for m in conversations]
        fmt = self.prompt.format
        if not tools or tool_choice == "none" or (tool_choice == "auto" and not self.constrain):
            texts = [t for t, _ in self._generate(prompts, self.free)]
        elif tool_choice == "required":
            texts = self.calls(prompts, tools)
        else:
            free = replace(self.free, stop=[*self.free.stop, fmt.trigger])
            done = self._generate(prompts, free)
            texts = [t for t, _ in done]
            began = [i for i, (t, cut) in enumerate(done) if _begins_call(fmt, t, cut)]
            for i, call in zip(began, self.calls([prompts[i] + texts[i] for i in began], tools)):
                texts[i] += call
        return [Reply.parsed(t, self.prompt.parse) for t in texts]

    def reply(
        self, messages: Messages, tools: Sequence[Mapping[str, Any]], tool_choice: str = "auto"
    ) -> Reply:
        return self.replies([messages], tools, tool_choice)[0]


def _begins_call(fmt: CallFormat, text: str, cut: str) -> bool:
    """Free generation stopped at the format's call trigger (where a call may start)."""
    return cut.startswith(fmt.trigger) and not (fmt.only_first and text.strip())
