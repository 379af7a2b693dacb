"""Plan-and-execute (Wang et al., 2023, Plan-and-Solve; LangChain's planner/executor split).

    question ─► planner: "1. ... 2. ... 3. ..."   (one reply, no tools)
                  │
                  ├─► step 1 ─► ReAct executor with the tools ─► result 1
                  ├─► step 2 (sees result 1) ─► ...             ─► result 2
                  └─► solver: the question and every result ─► answer (no tools)

A plan caps at `max_plan_steps` (an empty plan is the question itself, in one step); each
step is a ReAct run of at most `max_steps` replies.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lmforge.agents.model import ChatModel
from lmforge.agents.react import Event, Transcript, react
from lmforge.tools.registry import Toolbox

PLANNER_SYSTEM = (
    "Break the user's task into a short numbered list of steps (1., 2., ...), one per line. "
    "Write only the list."
)
SOLVER_SYSTEM = "Answer the user's task from the results of its steps. Reply with the answer only."
STEP = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s*(.+?)\s*$", re.I)


def parse_plan(text: str, limit: int) -> list[str]:
    """The numbered lines of a plan (or its non-empty lines when none is numbered)."""
    lines = text.splitlines()
    steps = [m.group(1) for m in map(STEP.match, lines) if m]
    steps = steps or [line.strip() for line in lines if line.strip()]
    return steps[:limit]


def _results(done: list[tuple[str, str]]) -> str:
    return "\n".join(f"{i}. {task} → {result}" for i, (task, result) in enumerate(done, 1))


def plan_and_execute(
    model: ChatModel,
    box: Toolbox,
    question: str,
    *,
    max_plan_steps: int = 5,
    max_steps: int = 4,
    on_event: Callable[[Event], None] | None = None,
) -> Transcript:
    log = Transcript(question)
    log.add(Event("question", question), on_event)
    planner = [{"role": "system", "content": PLANNER_SYSTEM}, {"role": "user", "content": question}]
    plan = parse_plan(model.reply(planner, [], "none").content, max_plan_steps) or [question]
    log.add(Event("plan", "\n".join(f"{i}. {s}" for i, s in enumerate(plan, 1))), on_event)
    done: list[tuple[str, str]] = []
    for i, task in enumerate(plan, 1):
        context = f"Results so far:\n{_results(done)}\n" if done else ""
        prompt = f"Overall task: {question}\n{context}Do step {i} now: {task}"
        run = react(model, box, prompt, max_steps=max_steps, on_event=on_event)
        log.events += [e for e in run.events if e.kind != "question"]  # already shown
        log.steps += run.steps
        done.append((task, run.answer or "(no result)"))
        log.add(Event("result", done[-1][1], i), on_event)
    solver = [
        {"role": "system", "content": SOLVER_SYSTEM},
        {"role": "user", "content": f"Task: {question}\nResults of its steps:\n{_results(done)}"},
    ]
    log.messages = solver
    log.answer = model.reply(solver, [], "none").content
    log.stop_reason = "answer"
    log.add(Event("answer", log.answer), on_event)
    return log
