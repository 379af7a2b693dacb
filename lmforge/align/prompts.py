"""Built-in prompt sets a program can judge, usable wherever a prompt file is:
`--data.prompts=arithmetic-1` as well as `--data.prompts=my_prompts.jsonl`.

    arithmetic-1|2|3        word problems with 1-3 operations (eval/arithmetic.py), the
                            demonstration pool (100 per level, none of the test questions);
                            answer = the exact number: judge with first-number (GRPO's
                            verifiable reward)
    arithmetic-1|2|3-test   the 100 test problems per level
    bbc-topic               BBC News training articles (cut to 300 characters) asking for the
                            topic in one word; answer = reference = the label: judge with exact
    bbc-topic-test          the same for the 225 test articles
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lmforge.data.labelled import load_labelled
from lmforge.data.preferences import PromptRecord, read_prompts
from lmforge.eval.arithmetic import LEVELS, problem_samples
from lmforge.registry import Registry

PROMPT_SETS: Registry[Callable[[], list[PromptRecord]]] = Registry("prompt set")
TOPIC_QUESTION = (
    "Which section of a newspaper does this article belong to? Answer with one word: "
    "business, entertainment, politics, sport or tech."
)
ARITHMETIC_QUESTION = "Answer with the number only."
TOPICS = ["business", "entertainment", "politics", "sport", "tech"]  # the question's options


def clip(text: str, chars: int) -> str:
    """The text on one line, cut at a word boundary to at most `chars` characters (+ ' ...')."""
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."


def topic_prompts(split: str, chars: int = 300) -> list[PromptRecord]:
    """BBC News articles asking for their topic in one word (answer and reference: the label;
    choices: the five topics, so that a reply naming several earns nothing)."""
    return [
        PromptRecord(
            [{"role": "user", "content": f"{clip(e.text, chars)}\n\n{TOPIC_QUESTION}"}],
            {"answer": e.label, "reference": e.label, "origin": e.origin, "choices": TOPICS},
        )
        for e in load_labelled("bbc-news", split)
    ]


def arithmetic_prompts(level: int, split: str) -> list[PromptRecord]:
    test = problem_samples(100, (level,), seed=0)
    samples = test
    if split != "test":
        samples = problem_samples(
            100, (level,), seed=1, exclude={s.fields["question"] for s in test}
        )
    return [
        PromptRecord(
            [{"role": "user", "content": f"{s.fields['question']} {ARITHMETIC_QUESTION}"}],
            {"answer": s.target, "reference": s.target, "origin": s.origin},
        )
        for s in samples
    ]


for _level in LEVELS:
    PROMPT_SETS.add(f"arithmetic-{_level}", lambda lv=_level: arithmetic_prompts(lv, "pool"))
    PROMPT_SETS.add(f"arithmetic-{_level}-test", lambda lv=_level: arithmetic_prompts(lv, "test"))
PROMPT_SETS.add("bbc-topic", lambda: topic_prompts("train"))
PROMPT_SETS.add("bbc-topic-test", lambda: topic_prompts("test"))


def load_prompts(sources: str | Sequence[str | Path], skip_bad: bool = False) -> list[PromptRecord]:
    """Prompt records from built-in set names and files, comma-separated or listed."""
    names = sources.split(",") if isinstance(sources, str) else [str(s) for s in sources]
    records: list[PromptRecord] = []
    for name in filter(None, names):
        if name in PROMPT_SETS:
            records += PROMPT_SETS.get(name)()
        else:
            records += read_prompts(name, skip_bad=skip_bad).items
    return records
