"""Chain-of-thought prompting, answer extraction and self-consistency.

    direct             demos "Question: … Answer: 9"                     → generate → extract
    cot, K > 0         demos "Question: … Answer: <rationale> The answer is 9."
                       (Wei et al., 2022)                                → generate → extract
    cot, K = 0         "Question: … Answer: Let's think step by step."   → rationale
                       (Kojima et al., 2022)   + " Therefore, the answer is" → generate → extract
    self-consistency   N sampled rationales ─► extract each ─► majority vote
                       (Wang et al., 2023)

A reasoning style says how a demonstration's answer is written, how the answer is read
back out of generated text, and what a zero-shot prompt appends (REASONING registry).
Extractors (EXTRACTORS registry) read an answer out of generated text, or return None.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lmforge.errors import DataError
from lmforge.prompting.template import Sample
from lmforge.registry import Registry

TRIGGER = "Let's think step by step."
ANSWER_TRIGGER = "Therefore, the answer is"

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)

Extractor = Callable[[str], str | None]
EXTRACTORS: Registry[Extractor] = Registry("answer extractor")


def canonical_number(text: str) -> str:
    """'1,234' → '1234', '17.0' → '17', '-3.50' → '-3.5' (answers compare as strings)."""
    value = float(text.replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


@EXTRACTORS.register("first-number")
def first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return canonical_number(match.group()) if match else None


@EXTRACTORS.register("last-number")
def last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return canonical_number(matches[-1]) if matches else None


@EXTRACTORS.register("answer-is")
def answer_is(text: str) -> str | None:
    """The number after the first "answer is" (a model that runs on may answer questions
    of its own afterwards); else the last number of the text."""
    match = _ANSWER_IS.search(text)
    return canonical_number(match.group(1)) if match else last_number(text)


@EXTRACTORS.register("first-line")
def first_line(text: str) -> str | None:
    line = text.strip().split("\n", 1)[0].strip()
    return line or None


def cot_answer(sample: Sample) -> str:
    """A demonstration's answer with its worked rationale."""
    if not sample.rationale:
        raise DataError(
            f"example {sample.origin or sample.target!r} has no rationale, so it cannot be a "
            "chain-of-thought demonstration; use reasoning=direct or a task with rationales"
        )
    return f"{sample.rationale} The answer is {sample.target}."


@dataclass(frozen=True)
class Reasoning:
    demo_answer: Callable[[Sample], str]  # how a demonstration's answer is written
    extractor: str | None  # EXTRACTORS name; None = the task's own extractor
    rationale: bool = False  # the model writes reasoning before the answer (needs more tokens)
    zero_shot_trigger: str = ""  # appended to a zero-shot prompt ("" = nothing)
    answer_trigger: str = ""  # second stage after a zero-shot rationale ("" = none)


REASONING: Registry[Reasoning] = Registry("reasoning style")
REASONING.add("direct", Reasoning(lambda s: s.target, None))
REASONING.add("cot", Reasoning(cot_answer, "answer-is", True, TRIGGER, ANSWER_TRIGGER))


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (None = no answer found, never counted); ties go to the
    answer that appeared first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)
