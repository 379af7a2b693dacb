"""The tools lab's training data: Toolformer-filtered calculator calls → function-calling SFT.

training problems ─► their worked rationales ("4732 - 1298 = 3434. 3 * 315 = 945. ...")
    ─► candidates before each result: sampled by SmolLM2 after a few-shot prompt, and
       proposed from the equation (its own left side and the other operations)
    ─► the Toolformer filter with SmolLM2 itself (tools/toolformer.py)
    ─► a problem whose every result has a kept call becomes one conversation:
       system + tools, question, one call per step, each result, "The answer is N."
    ─► rendered in SmolLM2's default tool format (plain messages) as JSONL for
       `lmforge finetune --task sft`
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.agents.react import REACT_SYSTEM
from lmforge.atomic import atomic_write_text
from lmforge.eval.arithmetic import Problem
from lmforge.tokenizer import Tokenizer
from lmforge.tools import ToolCall, calculator
from lmforge.tools.formats import CALL_FORMATS, plain_messages
from lmforge.tools.toolformer import (
    Candidate,
    ToolformerConfig,
    filter_calls,
    propose_calls,
    sample_calls,
)

EQUATION = re.compile(r"(\d+ [-+*/] \d+) = (\d+)\.")
SAMPLING_PROMPT = (
    "Each result below is worked out with a calculator call, written just before the result "
    "as [calculator(expression) → result].\n\n"
    "Sam starts with 12 cards. 12 + 30 = [calculator(12 + 30) → 42] 42. "
    "4 * 25 = [calculator(4 * 25) → 100] 100. 42 + 100 = [calculator(42 + 100) → 142] 142.\n\n"
    "Zoe starts with 905 shells. 905 - 218 = [calculator(905 - 218) → 687] 687. "
    "7 * 61 = [calculator(7 * 61) → 427] 427.\n\n"
)


def solution_messages(question: str, steps: list[tuple[str, str]], answer: str) -> list[dict]:
    """The ideal ReAct conversation: one calculator call per step, then the answer."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": REACT_SYSTEM},
        {"role": "user", "content": question},
    ]
    for i, (expression, result) in enumerate(steps):
        call = ToolCall("calculator", {"expression": expression}, f"call_{i}")
        messages.append({"role": "assistant", "content": "", "tool_calls": [call.to_openai()]})
        messages.append(
            {"role": "tool", "tool_call_id": call.id, "name": "calculator", "content": result}
        )
    messages.append({"role": "assistant", "content": f"The answer is {answer}."})
    return messages


def rationale_steps(problem: Problem) -> list[tuple[str, str]]:
    """The (expression, result) of every equation of a worked rationale."""
    return EQUATION.findall(problem.rationale)


def demonstration(problem: Problem) -> list[dict]:
    """A worked example for the untuned model: its conversation without the system prompt."""
    return solution_messages(problem.question, rationale_steps(problem), str(problem.answer))[1:]


def candidates(
    model: nn.Module, tokenizer: Tokenizer, texts: list[str], sampled: int, config: ToolformerConfig
) -> list[Candidate]:
    """Proposed calls for every text, and calls sampled by the model for the first `sampled`."""
    found = propose_calls(calculator, texts)
    if sampled:
        prompt, head = SAMPLING_PROMPT, texts[:sampled]
        found += sample_calls(model, tokenizer, calculator, prompt, head, config, progress=True)
    return found


def build_sft(
    model: nn.Module,
    tokenizer: Tokenizer,
    problems: list[Problem],
    p: dict[str, Any],
    path: Path,
) -> dict[str, Any]:
    """Filter candidate calls with the model; write the covered problems as SFT JSONL."""
    config = ToolformerConfig(
        positions=p["positions"], samples=p["samples"], threshold=p["threshold"]
    )
    texts = [problem.rationale for problem in problems]
    found = candidates(model, tokenizer, texts, p["sampled"], config)
    kept = filter_calls(model, tokenizer, calculator, texts, found, config, progress=True)
    solved = solutions(texts, kept)
    specs, fmt, lines = [calculator.spec()], CALL_FORMATS.get("hermes"), []
    for t, calls in solved.items():
        steps = [(c.argument, c.result) for c in calls]
        conv = solution_messages(problems[t].question, steps, str(problems[t].answer))
        record = {"messages": plain_messages(conv, specs, fmt)}
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
    scored = [c for c in found if c.result is not None]
    rows = [json.dumps(asdict(c) | {"gain": c.gain}, ensure_ascii=False) for c in scored]
    atomic_write_text(path.with_name("toolformer-candidates.jsonl"), "\n".join(rows) + "\n")
    stats = _stats(found, kept, texts, solved)
    stats["thresholds"] = {
        t: _at(t, texts, scored) for t in sorted({0.1, 0.3, 0.5, 1.0, config.threshold})
    }
    return stats


def is_right(text: str, c: Candidate) -> bool:
    """The call's result is the number the text writes where the call goes."""
    written = re.match(r"\s*(-?\d+)", text[c.position :])
    return bool(written) and written.group(1) == c.result


def _at(threshold: float, texts: list[str], scored: list[Candidate]) -> dict[str, int]:
    """What the filter keeps at one threshold: calls, right ones, complete solutions."""
    kept = [c for c in scored if c.gain >= threshold]
    right = sum(is_right(texts[c.text], c) for c in kept)
    return {"kept": len(kept), "right": right, "covered": len(solutions(texts, kept))}


def solutions(texts: list[str], kept: list[Candidate]) -> dict[int, list[Candidate]]:
    """Texts whose every result ("= N") has a kept call there: the best call per result."""
    best: dict[tuple[int, int], Candidate] = {}
    for c in kept:
        if (c.text, c.position) not in best or c.gain > best[(c.text, c.position)].gain:
            best[(c.text, c.position)] = c
    out = {}
    for t, text in enumerate(texts):
        calls = [best.get((t, m.end())) for m in re.finditer(r"=(?=\s*\d)", text)]
        if calls and all(calls):
            out[t] = calls
    return out


def _stats(
    found: list[Candidate], kept: list[Candidate], texts: list[str], solved: dict
) -> dict[str, Any]:
    by = {}
    for source in ("model", "proposed"):
        mine = [c for c in found if c.source == source]
        ran = [c for c in mine if c.result is not None]
        held = [c for c in kept if c.source == source]
        by[source] = {
            "candidates": len(mine),
            "executed": len(ran),
            "right": sum(is_right(texts[c.text], c) for c in ran),
            "kept": len(held),
            "kept_right": sum(is_right(texts[c.text], c) for c in held),
            "mean_gain_kept": sum(c.gain for c in held) / len(held) if held else 0.0,
        }
    examples = [
        {"argument": c.argument, "result": c.result, "source": c.source,
         "loss_minus": c.loss_minus, "loss_plus": c.loss_plus}
        for c in sorted((c for cs in solved.values() for c in cs), key=lambda c: -c.gain)[:3]
    ]  # fmt: skip
    return {"by_source": by, "problems": len(texts), "covered": len(solved), "examples": examples}
