"""A team of agents that pass messages (MetaGPT-style roles and subscriptions).

    user task ─► pool ─┬─► every role watching "user" acts ─► its message joins the pool
                       ├─► every role watching that sender acts ─► ...
                       └─► ... until the `final` role speaks (its message is the answer)

Each Role has its own system prompt, tools and model; to act, it runs a ReAct loop on the
pool's messages from the senders it watches ("[sender] content" lines), and its answer is
the message it publishes. Messages are handled in the order they were published, roles in
the order given, so a team with scripted models is deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from lmforge.agents.model import ChatModel
from lmforge.agents.react import Event, Transcript, react
from lmforge.errors import ConfigError
from lmforge.tools.registry import Toolbox


@dataclass
class Role:
    name: str
    system: str  # what this role does and how it answers
    model: ChatModel
    tools: Toolbox = field(default_factory=Toolbox)
    watches: tuple[str, ...] = ("user",)  # senders whose messages make this role act
    max_steps: int = 4


@dataclass
class Message:
    sender: str
    content: str


@dataclass
class TeamResult:
    answer: str
    messages: list[Message]  # the pool, in order
    runs: list[tuple[str, Transcript]]  # (role, its ReAct transcript) per action
    stop_reason: str  # answer | budget


class Team:
    def __init__(self, roles: list[Role], final: str) -> None:
        names = [r.name for r in roles]
        if len(set(names)) != len(names) or "user" in names:
            raise ConfigError(f"role names must be unique and not 'user': {names}")
        if final not in names:
            raise ConfigError(f"the final role {final!r} is not one of {names}")
        for role in roles:
            unknown = [w for w in role.watches if w not in names and w != "user"]
            if unknown:
                raise ConfigError(f"role {role.name!r} watches unknown senders {unknown}")
        self.roles, self.final = roles, final

    def _act(
        self, role: Role, pool: list[Message], on_event: Callable[[Event], None] | None
    ) -> Transcript:
        seen = "\n\n".join(f"[{m.sender}] {m.content}" for m in pool if m.sender in role.watches)
        tagged = None if on_event is None else (lambda e: on_event(replace(e, agent=role.name)))
        return react(role.model, role.tools, seen, system=role.system,
                     max_steps=role.max_steps, on_event=tagged)  # fmt: skip

    def run(
        self, task: str, max_messages: int = 12, on_event: Callable[[Event], None] | None = None
    ) -> TeamResult:
        pool = [Message("user", task)]
        queue, runs = deque(pool), []
        while queue and len(pool) < max_messages:
            message = queue.popleft()
            for role in self.roles:
                if message.sender not in role.watches or len(pool) >= max_messages:
                    continue
                run = self._act(role, pool, on_event)
                runs.append((role.name, run))
                pool.append(Message(role.name, run.answer))
                queue.append(pool[-1])
                if role.name == self.final:
                    return TeamResult(run.answer, pool, runs, "answer")
        return TeamResult("", pool, runs, "budget")
