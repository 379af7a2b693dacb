"""The tools lab: its bookkeeping exactly, and the quick run on SmolLM2."""

from __future__ import annotations

import json

import pytest

import lmforge.lab.tools as lab
from lmforge.agents import Event, Transcript
from lmforge.data.instruct import parse_record
from lmforge.eval.arithmetic import generate_big_problems
from lmforge.lab import run_experiment
from lmforge.lab.tools import digits, final_number, invalid_calls, verdict
from lmforge.lab.tools_data import (
    _at,
    demonstration,
    is_right,
    rationale_steps,
    solution_messages,
    solutions,
)
from lmforge.tools import Toolbox, ToolCall, calculator
from lmforge.tools.formats import CALL_FORMATS, plain_messages
from lmforge.tools.toolformer import Candidate


def test_final_number_and_digits():
    assert final_number("So 4,732 - 1298 = 3434. The answer is 3434.") == 3434
    assert final_number("no number") is None and final_number("-12") == -12
    problem = generate_big_problems(1, 2, 4, seed=0)[0]
    assert digits(problem) == 4


def test_invalid_calls_count_parse_errors_and_schema_violations():
    good = ToolCall("calculator", {"expression": "1+1"}, "a").to_openai()
    bad = ToolCall("calculator", {"expr": "1+1"}, "b").to_openai()
    log = Transcript("q")
    log.messages = [{"role": "assistant", "content": "", "tool_calls": [good, bad]}]
    log.events = [Event("error", "tool call 0 is not valid JSON (...)", 2),
                  Event("error", "calculator: division by zero", 3)]  # fmt: skip
    assert invalid_calls(log, Toolbox([calculator])) == (3, 2)  # a failed run is a valid call


def test_verdict_reads_the_table():
    rows = [
        {"name": "SmolLM2, no tools", "accuracy": 0.05, "invalid_rate": None},
        {"name": "SmolLM2 + calculator, constrained", "accuracy": 0.05, "invalid_rate": 0.0},
        {"name": "SmolLM2 + calculator, free", "accuracy": 0.0, "invalid_rate": 0.25},
        {"name": "tuned, no tools", "accuracy": 0.0, "invalid_rate": None},
        {"name": "tuned + calculator, constrained", "accuracy": 0.4, "invalid_rate": 0.0},
        {"name": "tuned + calculator, free", "accuracy": 0.3, "invalid_rate": 0.1},
    ]
    assert verdict(rows).splitlines() == [
        "- SmolLM2 + calculator, constrained: 5% against 5% for SmolLM2 without tools (×1.0; "
        "misses the target of ×2).",
        "- SmolLM2: invalid calls 25% when free, 0% constrained (target 0%).",
        "- tuned + calculator, constrained: 40% against 5% for SmolLM2 without tools (×8.0; "
        "meets the target of ×2), 0% for the tuned model without tools.",
        "- tuned: invalid calls 10% when free, 0% constrained (target 0%).",
    ]


def test_solutions_are_sft_records_in_the_default_format():
    problem = generate_big_problems(1, 2, 3, seed=1)[0]
    steps = rationale_steps(problem)
    assert steps and steps[-1][1] == str(problem.answer)
    messages = solution_messages(problem.question, steps, str(problem.answer))
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user"] + ["assistant", "tool"] * len(steps) + ["assistant"]
    plain = plain_messages(messages, [calculator.spec()], CALL_FORMATS.get("hermes"))
    conv, fmt = parse_record({"messages": plain})  # alternates user/assistant: valid SFT data
    assert fmt == "openai" and conv.messages[-1]["content"] == f"The answer is {problem.answer}."
    assert plain[2]["content"].startswith('<tool_call>\n{"name": "calculator"')
    assert demonstration(problem) == messages[1:]


@pytest.mark.assets
@pytest.mark.slow
def test_tools_quick_on_smollm2(tmp_path):
    text = run_experiment("tools", tmp_path / "lab", quick=True).read_text()
    assert "| condition | 3-digit | 4-digit | all |" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names == [c.name for c in lab.CONDITIONS]  # the tuned model's rows too
    constrained = results["rows"][1]
    assert constrained["attempts"] >= 2 and constrained["invalid"] == 0
    assert (tmp_path / "lab" / "accuracy.png").stat().st_size > 1000


def test_the_tuning_sentence_with_and_without_held_out_data():
    p = lab.plan(quick=True)
    assert lab.tuning_sentence(p, {"val_loss": None, "train_examples": 2}) == (
        "LoRA r=8 (all linear layers), 2 steps of 2: no held-out set, 2 training conversations."
    )
    full = lab.tuning_sentence(lab.plan(quick=False), {"val_loss": 0.41234, "train_examples": 40})
    assert full == (
        "LoRA r=16 (all linear layers), 40 steps of 4: validation loss 0.412, "
        "40 training conversations."
    )
    assert lab.tuning_sentence(p, {"error": "boom"}) == "Fine-tuning failed: boom"


def test_conditions_are_saved_as_they_finish_and_reused(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(lab, "run_condition", lambda c, *a: ran.append(c.name) or {"name": c.name})
    p = lab.plan(quick=True)
    first = lab._conditions("base", None, None, [], [], p, tmp_path)
    assert [r["name"] for r in first] == [c.name for c in lab.CONDITIONS[:3]] == ran
    again = lab._conditions("base", None, None, [], [], p, tmp_path)
    assert again == first and len(ran) == 3  # nothing ran twice
    lab._conditions("base", None, None, [], [], {**p, "max_steps": 9}, tmp_path)
    assert len(ran) == 6  # another plan: run again


def test_a_kept_call_is_right_when_its_result_is_the_written_number():
    text = "Mia starts with 4732 apples. 4732 - 1298 = 3434. 3 * 315 = 945."
    first, second = text.index("= 3434") + 1, text.index("= 945") + 1
    calls = [
        Candidate(0, first, "4732 - 1298", "3434", "proposed", loss_minus=2.0, loss_plus=1.0),
        Candidate(0, first, "4732 + 1298", "6030", "proposed", loss_minus=2.0, loss_plus=1.8),
        Candidate(0, second, "3 * 315", "945", "model", loss_minus=1.0, loss_plus=0.6),
    ]
    assert [is_right(text, c) for c in calls] == [True, False, True]
    assert _at(0.1, [text], calls) == {"kept": 3, "right": 2, "covered": 1}
    assert _at(0.5, [text], calls) == {"kept": 1, "right": 1, "covered": 0}
    assert [c.argument for c in solutions([text], calls)[0]] == ["4732 - 1298", "3 * 315"]
