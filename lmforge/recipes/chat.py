"""`lmforge chat`: an interactive conversation with a chat model, streamed token by token.

Commands at the prompt: `/reset` forgets the conversation (the system prompt stays),
`/exit` (or end of input) quits. The prompt is the model's own chat template applied to
the whole history; when the history outgrows the context, the oldest turns are dropped.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

from lmforge.chat import chat_format, chat_stop_strings, chat_stop_tokens
from lmforge.hub import GenerationDefaults, generation_defaults
from lmforge.model.generate import stream
from lmforge.model.host import host_for
from lmforge.recipes.source import ModelSource, SamplingFlags, describe_sampling, load_source


@dataclass
class ChatConfig(SamplingFlags, ModelSource):  # fields (and flags): model first
    max_new_tokens: int = 200  # most new tokens of one reply
    temperature: float | None = None  # 0 = greedy; default: the checkpoint's, else 0.7
    system: str = ""  # system prompt that opens the conversation

    defaults: ClassVar[dict[str, Any]] = {**SamplingFlags.defaults, "temperature": 0.7}

    def validate(self) -> None:
        ModelSource.validate(self)
        self.sampling(GenerationDefaults({}, [], ""))  # the flags' own ranges


def _prompt_ids(history: list[dict], tokenizer, room: int) -> list[int]:
    """The templated history as ids, dropping the oldest exchanges until it fits in `room`."""
    keep_system = 1 if history and history[0]["role"] == "system" else 0
    turns = list(history)
    while True:
        ids = tokenizer.encode(chat_format(turns, tokenizer))
        if len(ids) <= room or len(turns) <= keep_system + 1:
            return ids[-room:]
        del turns[keep_system : keep_system + 2]  # the oldest user/assistant pair


def run_chat(
    cfg: ChatConfig, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> list[dict]:
    """Talk until /exit or end of input; returns the conversation as it stands."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    cfg.validate()
    model, tokenizer = load_source(cfg, merge=True)
    found = generation_defaults(cfg.model)
    sampling, origin = cfg.sampling(found)
    config = dataclasses.replace(sampling, stop=[*sampling.stop, *chat_stop_strings(tokenizer)])
    stops = list(dict.fromkeys([*chat_stop_tokens(tokenizer), *found.eos_token_ids]))
    room = host_for(model).max_length() - config.max_new_tokens
    start = [{"role": "system", "content": cfg.system}] if cfg.system else []
    history = list(start)
    stdout.write(f"lmforge chat with {cfg.model}: /reset forgets, /exit quits\n")
    stdout.write(describe_sampling(sampling, origin) + "\n")
    while True:
        stdout.write("\nyou> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            stdout.write("\n")
            return history
        text = line.strip()
        if text == "/reset":
            history = list(start)
            stdout.write("(conversation cleared)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        stdout.write("assistant> ")
        pieces = []
        for piece in stream(
            model,
            _prompt_ids(history, tokenizer, room),
            config,
            eos_token_id=stops,
            decode=tokenizer.decode,
        ):
            stdout.write(piece)
            stdout.flush()
            pieces.append(piece)
        stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
