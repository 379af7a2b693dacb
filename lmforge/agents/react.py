"""ReAct (Yao et al., 2023): the model alternates reasoning and acting until it can answer.

    question ─► reply ─┬─ calls? ──► action(s) ─► Toolbox ─► observation(s) ─┐
                       │                                                     │
                       │   (thought = the reply's text beside its calls)     │
                       └─ no call ─► answer (stop)     ◄── next step ────────┘

With function calling, a step is one model reply: its text is the thought, its calls are
the actions, and each tool result is an observation (a `tool` message). A malformed call
is an observation too ("error: ..."), so the model can fix it. The loop stops at the first
reply without a call (stop reason "answer"), when `stop` says so ("stop"), or after
`max_steps` replies ("budget"). The Transcript keeps every event and message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.agents.model import ChatModel, Reply
from lmforge.atomic import atomic_write_text
from lmforge.tools.registry import Toolbox

REACT_SYSTEM = (
    "You solve the user's task step by step. Think briefly, then call a tool when it helps; "
    "read its result and continue. When you know the answer, reply with it and no tool call."
)


@dataclass
class Event:
    kind: str  # question | thought | action | observation | error | answer | stop
    text: str
    step: int = 0
    agent: str = ""  # which agent (in a team)


@dataclass
class Transcript:
    question: str
    events: list[Event] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    answer: str = ""
    stop_reason: str = ""  # answer | stop | budget
    steps: int = 0

    def add(self, event: Event, on_event: Callable[[Event], None] | None) -> None:
        self.events.append(event)
        if on_event is not None:
            on_event(event)

    def calls(self) -> int:
        return sum(e.kind == "action" for e in self.events)

    def errors(self) -> int:
        return sum(e.kind == "error" for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """The transcript as JSON (atomic write)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=1))
        return Path(path)


def format_event(event: Event) -> str:
    """One line of a printed transcript, e.g. `[2] action: calculator({"expression": "2+2"})`."""
    who = f"{event.agent} " if event.agent else ""
    step = f"[{event.step}] " if event.step else ""
    return f"{who}{step}{event.kind}: {event.text}"


def _observe(reply: Reply, box: Toolbox, step: int, log: Transcript, on_event: Any) -> None:
    """Run the reply's calls; append one tool message per call or malformed call."""
    if reply.content and (reply.calls or reply.errors):
        log.add(Event("thought", reply.content, step), on_event)
    for call in reply.calls:
        args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        log.add(Event("action", f"{call.name}({args})", step), on_event)
        result = box.call(call)
        log.messages.append(result.message())
        log.add(Event("error" if result.error else "observation", result.content, step), on_event)
    for error in reply.errors:
        log.messages.append({"role": "tool", "name": "error", "content": f"error: {error}"})
        log.add(Event("error", error, step), on_event)


def _begin(question: str, system: str | None, examples: Sequence[Mapping[str, Any]],
           on_event: Callable[[Event], None] | None) -> Transcript:  # fmt: skip
    log = Transcript(question)
    log.messages = [{"role": "system", "content": system}] if system else []
    log.messages += [dict(m) for m in examples]
    log.messages.append({"role": "user", "content": question})
    log.add(Event("question", question), on_event)
    return log


def _take(
    log: Transcript,
    reply: Reply,
    step: int,
    box: Toolbox,
    stop: Callable[[Transcript], bool] | None,
    on_event: Callable[[Event], None] | None,
) -> bool:
    """Record one reply and run its calls; True when the run ends with it."""
    log.messages.append(reply.message(f"call_{step}"))
    log.steps = step
    if not reply.calls and not reply.errors:
        log.answer, log.stop_reason = reply.content, "answer"
        log.add(Event("answer", reply.content, step), on_event)
        return True
    _observe(reply, box, step, log, on_event)
    if stop is not None and stop(log):
        log.stop_reason = "stop"
        log.add(Event("stop", "the stop condition holds", step), on_event)
        return True
    return False


def _replies(model: ChatModel, logs: list[Transcript], specs: list, choice: str) -> list[Reply]:
    """One reply per conversation: in one batch when the model can, else one by one."""
    batch = getattr(model, "replies", None)
    if batch is not None:
        return batch([log.messages for log in logs], specs, choice)
    return [model.reply(log.messages, specs, choice) for log in logs]


def react_many(
    model: ChatModel,
    box: Toolbox,
    questions: Sequence[str],
    *,
    system: str | None = REACT_SYSTEM,
    examples: Sequence[Mapping[str, Any]] = (),
    max_steps: int = 6,
    tool_choice: str = "auto",
    first_tool_choice: str | None = None,
    stop: Callable[[Transcript], bool] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> list[Transcript]:
    """ReAct on several questions in lockstep: each step asks the model for the replies of
    every unfinished run at once (one generation batch), so decoding is shared."""
    logs = [_begin(q, system, examples, on_event) for q in questions]
    live, specs = list(logs), box.specs()
    for step in range(1, max_steps + 1):
        choice = first_tool_choice if step == 1 and first_tool_choice else tool_choice
        replies = _replies(model, live, specs, choice)
        live = [
            log for log, r in zip(live, replies) if not _take(log, r, step, box, stop, on_event)
        ]
        if not live:
            return logs
    for log in live:
        log.stop_reason = "budget"
        log.add(Event("stop", f"no answer within {max_steps} steps", max_steps), on_event)
    return logs


def react(
    model: ChatModel,
    box: Toolbox,
    question: str,
    *,
    system: str | None = REACT_SYSTEM,
    examples: Sequence[Mapping[str, Any]] = (),
    max_steps: int = 6,
    tool_choice: str = "auto",
    first_tool_choice: str | None = None,
    stop: Callable[[Transcript], bool] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Transcript:
    """Run the loop on one question; `examples` are earlier messages (demonstrations).

    `tool_choice` applies to every reply, `first_tool_choice` (if given) to the first: e.g.
    "required" makes a small model act before it answers."""
    settings = dict(system=system, examples=examples, max_steps=max_steps, stop=stop,
                    tool_choice=tool_choice, first_tool_choice=first_tool_choice)  # fmt: skip
    return react_many(model, box, [question], on_event=on_event, **settings)[0]
