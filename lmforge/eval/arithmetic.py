"""Arithmetic word problems with exact answers, worked rationales and difficulty levels.

Level L applies L operations to one quantity, so a level-3 problem needs three steps:

    start  "Mia has 7 marbles."                    rationale  "Mia starts with 7 marbles."
    op 1   "She buys 5 more."                                 "7 + 5 = 12."
    op 2   "Then she gives 3 to Leo."                         "12 - 3 = 9."
    op 3   "Then she doubles her marbles."                    "9 * 2 = 18."
    ask    "How many marbles does Mia have now?"   answer     "18"

Operations (OPS registry): add, subtract (never below one), double/triple (only while
the quantity is at most 25) and halve (only when it is even), so every answer is a whole
positive number. Generation is deterministic: `generate_problems(n, level, seed)` seeds
its own generator from (seed, level) and depends on nothing else.

The harder family (`generate_big_problems(n, steps, digits, seed)`) tells the same stories
with `digits`-digit quantities, where a small model's mental arithmetic fails and a
calculator does not (BIG_OPS: gets k more, gives k away, buys or sells a boxes of b):

    "Ava has 4732 stickers. She gives 1298 to Sam. Then she buys 3 boxes of 315 stickers
     each. How many stickers does Ava have now?"
    rationale "Ava starts with 4732 stickers. 4732 - 1298 = 3434. 3 * 315 = 945.
               3434 + 945 = 4379."   answer 4379
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

from lmforge.errors import ConfigError
from lmforge.prompting.template import Sample
from lmforge.registry import Registry

PEOPLE = [
    ("Mia", "she", "her"), ("Leo", "he", "his"), ("Ava", "she", "her"), ("Sam", "he", "his"),
    ("Zoe", "she", "her"), ("Max", "he", "his"), ("Ivy", "she", "her"), ("Tom", "he", "his"),
]  # fmt: skip
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cards", "coins", "shells"]
LEVELS = (1, 2, 3)


@dataclass(frozen=True)
class Person:
    name: str
    subject: str  # he / she
    possessive: str  # his / her


@dataclass(frozen=True)
class Step:
    value: int  # the quantity after the step
    sentence: str  # how the problem says it
    working: str  # how the rationale computes it


@dataclass(frozen=True)
class Op:
    applies: Callable[[int], bool]  # may this operation follow the current value?
    make: Callable[[random.Random, int, Person, str, str], Step]  # (rng, value, who, item, other)


OPS: Registry[Op] = Registry("arithmetic operation")


def _add(rng: random.Random, v: int, p: Person, item: str, other: str) -> Step:
    k = rng.randint(2, 12)
    verb = rng.choice(["buys", "finds", "gets"])
    return Step(v + k, f"{p.subject.capitalize()} {verb} {k} more.", f"{v} + {k} = {v + k}.")


def _subtract(rng: random.Random, v: int, p: Person, item: str, other: str) -> Step:
    k = rng.randint(1, v - 1)
    return Step(v - k, f"{p.subject.capitalize()} gives {k} to {other}.", f"{v} - {k} = {v - k}.")


def _multiply(rng: random.Random, v: int, p: Person, item: str, other: str) -> Step:
    k, verb = rng.choice([(2, "doubles"), (3, "triples")])
    return Step(
        v * k, f"{p.subject.capitalize()} {verb} {p.possessive} {item}.", f"{v} * {k} = {v * k}."
    )


def _halve(rng: random.Random, v: int, p: Person, item: str, other: str) -> Step:
    sentence = f"{p.subject.capitalize()} gives half of {p.possessive} {item} to {other}."
    return Step(v // 2, sentence, f"{v} / 2 = {v // 2}.")


OPS.add("add", Op(lambda v: True, _add))
OPS.add("subtract", Op(lambda v: v >= 2, _subtract))
OPS.add("multiply", Op(lambda v: v <= 25, _multiply))
OPS.add("halve", Op(lambda v: v >= 2 and v % 2 == 0, _halve))


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    rationale: str  # the worked steps, e.g. "Mia starts with 7 marbles. 7 + 5 = 12."
    level: int  # number of operations


def make_problem(rng: random.Random, level: int) -> Problem:
    """One problem of `level` operations drawn from `rng`."""
    who, other = (Person(*p) for p in rng.sample(PEOPLE, 2))
    item = rng.choice(ITEMS)
    value = rng.randint(3, 20)
    sentences = [f"{who.name} has {value} {item}."]
    working = [f"{who.name} starts with {value} {item}."]
    for i in range(level):
        name = rng.choice([n for n in OPS.names() if OPS.get(n).applies(value)])
        step = OPS.get(name).make(rng, value, who, item, other.name)
        sentence = (
            step.sentence if i == 0 else "Then " + step.sentence[0].lower() + step.sentence[1:]
        )
        sentences.append(sentence)
        working.append(step.working)
        value = step.value
    sentences.append(f"How many {item} does {who.name} have now?")
    return Problem(" ".join(sentences), value, " ".join(working), level)


def generate_problems(n: int, level: int, seed: int = 0) -> list[Problem]:
    """n problems of one level; the same (n, level, seed) always gives the same list."""
    if level not in LEVELS:
        raise ConfigError(f"arithmetic level {level} is unknown; choose from {list(LEVELS)}")
    rng = random.Random(f"arithmetic-{seed}-{level}")
    return [make_problem(rng, level) for _ in range(n)]


def problem_samples(
    n: int, levels: tuple[int, ...], seed: int, exclude: Collection[str] = ()
) -> list[Sample]:
    """n problems per level as samples ({question} field, answer, rationale), minus `exclude`."""
    samples = []
    for level in levels:
        for i, p in enumerate(generate_problems(n, level, seed)):
            if p.question not in exclude:
                origin = f"arithmetic(level={level}, seed={seed})#{i}"
                samples.append(Sample({"question": p.question}, str(p.answer), p.rationale, origin))
    return samples


# --- larger operands ------------------------------------------------------------------------


def _number(rng: random.Random, digits: int, below: int | None = None) -> int:
    """A `digits`-digit number (smaller than `below` when given)."""
    high = 10**digits - 1 if below is None else min(10**digits - 1, below - 1)
    return rng.randint(10 ** (digits - 1), high)


BigOp = Callable[[random.Random, int, Person, str, str, int], list[Step]]
BIG_OPS: Registry[tuple[Callable[[int, int], bool], BigOp]] = Registry("large-number operation")


def _gets(rng: random.Random, v: int, p: Person, item: str, other: str, d: int) -> list[Step]:
    k = _number(rng, d)
    verb = rng.choice(["buys", "finds", "gets"])
    return [Step(v + k, f"{p.subject.capitalize()} {verb} {k} more.", f"{v} + {k} = {v + k}.")]


def _gives(rng: random.Random, v: int, p: Person, item: str, other: str, d: int) -> list[Step]:
    k = _number(rng, d, below=v)
    return [Step(v - k, f"{p.subject.capitalize()} gives {k} to {other}.", f"{v} - {k} = {v - k}.")]


def _boxes(rng: random.Random, v: int, p: Person, item: str, other: str, d: int) -> list[Step]:
    a, b = rng.randint(2, 9), _number(rng, max(2, d - 1))
    sells = a * b < v and rng.random() < 0.5
    verb, sign, total = ("sells", "-", v - a * b) if sells else ("buys", "+", v + a * b)
    sentence = f"{p.subject.capitalize()} {verb} {a} boxes of {b} {item} each."
    return [Step(a * b, sentence, f"{a} * {b} = {a * b}."),
            Step(total, sentence, f"{v} {sign} {a * b} = {total}.")]  # fmt: skip


BIG_OPS.add("gets", (lambda v, d: True, _gets))
BIG_OPS.add("gives", (lambda v, d: v > 10**d, _gives))
BIG_OPS.add("boxes", (lambda v, d: True, _boxes))


def make_big_problem(rng: random.Random, steps: int, digits: int) -> Problem:
    """A problem of `steps` operations on `digits`-digit quantities."""
    who, other = (Person(*p) for p in rng.sample(PEOPLE, 2))
    item = rng.choice(ITEMS)
    value = _number(rng, digits)
    sentences = [f"{who.name} has {value} {item}."]
    working = [f"{who.name} starts with {value} {item}."]
    for i in range(steps):
        name = rng.choice([n for n in BIG_OPS.names() if BIG_OPS.get(n)[0](value, digits)])
        done = BIG_OPS.get(name)[1](rng, value, who, item, other.name, digits)
        sentence = done[0].sentence
        sentences.append(sentence if i == 0 else "Then " + sentence[0].lower() + sentence[1:])
        working += [step.working for step in done]
        value = done[-1].value
    sentences.append(f"How many {item} does {who.name} have now?")
    return Problem(" ".join(sentences), value, " ".join(working), steps)


def generate_big_problems(n: int, steps: int, digits: int, seed: int = 0) -> list[Problem]:
    """n problems; the same (n, steps, digits, seed) always gives the same list."""
    if steps < 1 or not 2 <= digits <= 6:
        raise ConfigError(f"big arithmetic needs steps >= 1 and 2-6 digits, got {steps}, {digits}")
    rng = random.Random(f"arithmetic-big-{seed}-{steps}-{digits}")
    return [make_big_problem(rng, steps, digits) for _ in range(n)]
