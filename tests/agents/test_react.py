"""ReAct, plan-and-execute and a team, driven by scripted models: exact transcripts."""

from __future__ import annotations

import json

import pytest

from lmforge.agents import (
    Role,
    ScriptedModel,
    Team,
    format_event,
    plan_and_execute,
    react,
)
from lmforge.agents.plan import parse_plan
from lmforge.errors import ConfigError
from lmforge.tools import Toolbox, calculator


def call(expression: str) -> str:
    body = {"name": "calculator", "arguments": {"expression": expression}}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"


def test_react_runs_thought_action_observation_until_the_answer():
    model = ScriptedModel(
        [
            "4732 - 1298 first.\n" + call("4732 - 1298"),
            '<tool_call>{"name": "calculator", "arguments": {"expression": 3434 * 2}}</tool_call>',
            call("3434 * 2") + call("1 / 0"),
            "答案是 6868。",
        ]
    )
    printed = []
    log = react(
        model, Toolbox([calculator]), "4732 - 1298, then double it?", on_event=printed.append
    )
    assert [format_event(e) for e in log.events] == [
        "question: 4732 - 1298, then double it?",
        "[1] thought: 4732 - 1298 first.",
        '[1] action: calculator({"expression": "4732 - 1298"})',
        "[1] observation: 3434",
        "[2] error: tool call 0 is not valid JSON (Expecting ',' delimiter at character 56): "
        '{"name": "calculator", "arguments": {"expression": 3434 * 2}}',
        '[3] action: calculator({"expression": "3434 * 2"})',
        "[3] observation: 6868",
        '[3] action: calculator({"expression": "1 / 0"})',
        "[3] error: calculator: division by zero",
        "[4] answer: 答案是 6868。",
    ]
    assert printed == log.events
    assert (log.answer, log.stop_reason, log.steps, log.calls(), log.errors()) == (
        "答案是 6868。", "answer", 4, 3, 2,
    )  # fmt: skip
    roles = [m["role"] for m in log.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant",
                     "tool", "tool", "assistant"]  # fmt: skip
    assert log.messages[3] == {
        "role": "tool", "name": "calculator", "content": "3434", "tool_call_id": "call_1_0",
    }  # fmt: skip
    assert (
        log.messages[2]["tool_calls"][0]["function"]["arguments"] == '{"expression": "4732 - 1298"}'
    )
    # The model read the error of its malformed call before its third reply.
    assert model.seen[2][-1]["content"].startswith("error: tool call 0 is not valid JSON")


def test_react_stops_at_the_budget_and_at_a_stop_condition(tmp_path):
    box = Toolbox([calculator])
    log = react(ScriptedModel([call("1+1")] * 3), box, "loop", max_steps=2)
    assert (log.stop_reason, log.steps, log.answer, log.calls()) == ("budget", 2, "", 2)
    assert log.events[-1].text == "no answer within 2 steps"
    stop_at_two = react(
        ScriptedModel([call("1+1"), call("2+2"), "unused"]),
        box,
        "stop when 4 is seen",
        stop=lambda t: any(e.text == "4" for e in t.events if e.kind == "observation"),
    )
    assert (stop_at_two.stop_reason, stop_at_two.steps) == ("stop", 2)
    saved = json.loads(stop_at_two.save(tmp_path / "t.json").read_text())
    assert saved["stop_reason"] == "stop" and saved["events"][0]["text"] == "stop when 4 is seen"


def test_examples_come_before_the_question():
    model = ScriptedModel(["42"])
    demo = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    react(model, Toolbox([]), "6*7?", system=None, examples=demo)
    assert model.seen[0] == [*demo, {"role": "user", "content": "6*7?"}]


def test_plan_and_execute():
    model = ScriptedModel(
        [
            "Plan:\n1. Subtract 1298 from 4732.\n2) Double the result.",
            call("4732 - 1298"),
            "3434",
            lambda messages: (
                "6868" if "1. Subtract 1298 from 4732. → 3434" in messages[-1]["content"] else "?"
            ),
            "The answer is 6868.",
        ]
    )
    log = plan_and_execute(model, Toolbox([calculator]), "Take 1298 from 4732 and double it.")
    kinds = [e.kind for e in log.events]
    assert kinds == ["question", "plan", "action", "observation", "answer", "result", "answer",
                     "result", "answer"]  # fmt: skip
    assert log.events[1].text == "1. Subtract 1298 from 4732.\n2. Double the result."
    assert (log.answer, log.steps) == ("The answer is 6868.", 3)
    assert log.messages[1]["content"].endswith(
        "1. Subtract 1298 from 4732. → 3434\n2. Double the result. → 6868"
    )
    assert parse_plan("first\n\nsecond\nthird", 2) == ["first", "second"]
    empty = plan_and_execute(ScriptedModel(["", "4", "4"]), Toolbox([]), "2 + 2?")
    assert [e.text for e in empty.events if e.kind in ("plan", "result")] == ["1. 2 + 2?", "4"]


def test_team_passes_messages_between_roles():
    planner = ScriptedModel(["Compute 4732 - 1298, then check it."])
    worker = ScriptedModel([call("4732 - 1298"), "4732 - 1298 = 3434"])
    reviewer = ScriptedModel([call("3434 + 1298"), "Checked: 3434 is right."])
    team = Team(
        [
            Role("planner", "You plan.", planner),
            Role("worker", "You compute.", worker, Toolbox([calculator]), watches=("planner",)),
            Role("reviewer", "You check.", reviewer, Toolbox([calculator]), watches=("worker",)),
        ],
        final="reviewer",
    )
    events = []
    result = team.run("What is 4732 - 1298?", on_event=events.append)
    assert [(m.sender, m.content) for m in result.messages] == [
        ("user", "What is 4732 - 1298?"),
        ("planner", "Compute 4732 - 1298, then check it."),
        ("worker", "4732 - 1298 = 3434"),
        ("reviewer", "Checked: 3434 is right."),
    ]
    assert (result.answer, result.stop_reason) == ("Checked: 3434 is right.", "answer")
    assert worker.seen[0][0] == {"role": "system", "content": "You compute."}
    assert worker.seen[0][1]["content"] == "[planner] Compute 4732 - 1298, then check it."
    assert reviewer.seen[0][1]["content"] == "[worker] 4732 - 1298 = 3434"
    observed = [(e.agent, e.text) for e in events if e.kind == "observation"]
    assert observed == [("worker", "3434"), ("reviewer", "4732")]


def test_team_configuration_errors_and_budget():
    model = ScriptedModel(["a", "b", "c"])
    with pytest.raises(ConfigError, match="final role 'x'"):
        Team([Role("a", "", model)], final="x")
    with pytest.raises(ConfigError, match="watches unknown senders"):
        Team([Role("a", "", model, watches=("nobody",))], final="a")
    echo = Team([Role("a", "", model), Role("b", "", model, watches=("a",))], final="b")
    short = echo.run("go", max_messages=2)
    assert short.stop_reason == "budget" and [m.content for m in short.messages] == ["go", "a"]


def test_scripted_model_refuses_to_run_past_its_script():
    with pytest.raises(ConfigError, match="the script has 1 replies"):
        react(ScriptedModel([call("1")]), Toolbox([calculator]), "x")
