"""Judges: score replies to prompts, for rollouts (PPO, GRPO) and for building preferences.

A judge is `(prompts, replies) → scores`, one float per reply. It is named by a string:

    exact                    1 when the reply is the record's "answer" (case, spaces and final
                             punctuation aside), ½ when it names the answer among other words
                             but none of the record's other "choices" (naming every option
                             earns nothing); Chinese words count without spaces around them
    first-number             1 when the first number in the reply equals the "answer"
    python:PKG.MODULE:FN     your function FN(prompt: PromptRecord, reply: str) -> float
    reward:RUN_DIR           a reward model trained by `lmforge align --method reward`

Rules are registered in RULES (`@RULES.register("name")` on a function of the same
signature), so a rule a program can check — a verifiable reward — is one function.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from lmforge.align.reward import RewardModel
from lmforge.align.store import load_reward_model
from lmforge.chat import chat_format
from lmforge.data.preferences import PromptRecord
from lmforge.data.sft import EncodedExample, collate_padded
from lmforge.errors import ConfigError, DataError
from lmforge.registry import Registry
from lmforge.text_metrics import CJK
from lmforge.tokenizer import Tokenizer

Rule = Callable[[PromptRecord, str], float]
RULES: Registry[Rule] = Registry("judge rule")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class Judge(Protocol):
    def __call__(self, prompts: Sequence[PromptRecord], replies: Sequence[str]) -> list[float]: ...


def _answer(prompt: PromptRecord) -> str:
    if "answer" not in prompt.meta:
        where = prompt.meta.get("origin", "a prompt record")
        raise DataError(f"{where}: the judge needs an 'answer' field in every prompt record")
    return str(prompt.meta["answer"])


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!?,;:\"'。！？，；：、“”")


def _names(word: str, text: str) -> bool:
    """Whether `text` holds `word` as a word: not inside a longer word of a spaced script
    ("sport" is not in "sports"); Chinese and Japanese words have no spaces around them, so
    a CJK neighbour is no part of the word ("体育" is in "属于体育版")."""
    letter = rf"[^\W{CJK}]"  # a word character of a spaced script
    pattern = rf"(?<!{letter}){re.escape(word.lower())}(?!{letter})"
    return re.search(pattern, text) is not None


@RULES.register("exact")
def exact(prompt: PromptRecord, reply: str) -> float:
    answer = _normal(_answer(prompt))
    if _normal(reply) == answer:
        return 1.0
    text = reply.lower()
    choices = prompt.meta.get("choices", [])
    if not isinstance(choices, list):
        where = prompt.meta.get("origin", "a prompt record")
        raise DataError(f"{where}: 'choices' must be a list of the options, got {choices!r}")
    others = [c for c in choices if _normal(str(c)) != answer]
    if any(_names(str(c), text) for c in others):
        return 0.0
    return 0.5 if _names(answer, text) else 0.0


@RULES.register("first-number")
def first_number(prompt: PromptRecord, reply: str) -> float:
    found = NUMBER.search(reply.replace(",", ""))
    try:
        return float(found is not None and float(found.group()) == float(_answer(prompt)))
    except ValueError:
        raise DataError(f"the answer {_answer(prompt)!r} is not a number") from None


class RuleJudge:
    """A rule applied to every (prompt, reply)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __call__(self, prompts: Sequence[PromptRecord], replies: Sequence[str]) -> list[float]:
        return [float(self.rule(p, r)) for p, r in zip(prompts, replies)]


class RewardJudge:
    """A reward model's score of prompt + reply, rendered with the chat template as in its
    training (an empty reply is scored too); too long: the last max_length tokens."""

    def __init__(
        self,
        model: RewardModel,
        tokenizer: Tokenizer,
        max_length: int | None = None,
        batch_size: int = 8,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[PromptRecord], replies: Sequence[str]) -> list[float]:
        texts = [
            chat_format(
                [*p.messages, {"role": "assistant", "content": r}],
                self.tokenizer,
                add_generation_prompt=False,
            )
            for p, r in zip(prompts, replies)
        ]
        rows = [
            ids[-self.max_length :] if self.max_length else ids
            for ids in self.tokenizer.encode_batch(texts)
        ]
        examples = [EncodedExample(ids, ids) for ids in rows]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_id or 0
        scores: list[float] = []
        for i in range(0, len(examples), self.batch_size):
            batch = collate_padded(examples[i : i + self.batch_size], pad)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            scores += self.model(ids, mask).tolist()
        return scores


def _python_rule(spec: str) -> Rule:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"judge python:{spec}: cannot import {name or '(no function)'} from {module} "
            f"({e}); give python:package.module:function"
        ) from None
    if not callable(fn):
        raise ConfigError(f"judge python:{spec}: {name} is not a function")
    return fn


def make_judge(spec: str, tokenizer: Tokenizer, max_length: int | None = None) -> Judge:
    """The judge a spec names (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "python" and rest:
        return RuleJudge(_python_rule(rest))
    if kind == "reward" and rest:
        return RewardJudge(load_reward_model(rest), tokenizer, max_length)
    if spec in RULES:
        return RuleJudge(RULES.get(spec))
    raise ConfigError(
        f"judge {spec!r} is unknown: use a rule ({', '.join(RULES.names())}), "
        "python:package.module:function or reward:RUN_DIR"
    )
