"""Prompts with named fields, verbalizers, and few-shot assembly.

A template is text with named holes (`"Article: {text}\\nTopic:"`); a verbalizer says which
words stand for each label (Schick & Schütze, 2021, PET); a few-shot prompt puts K solved
demonstrations before the query (Brown et al., 2020, GPT-3), zero-shot when K = 0:

    instruction                                   (optional)
    ── separator ──
    template(demo 1) + answer(demo 1)            ┐
    ── separator ──                               │  K demonstrations
    template(demo K) + answer(demo K)            ┘
    ── separator ──
    template(query)                               ◄─ the model continues here

An answer follows its example through the format's `answer` template (`" {answer}"`), the
same way for a demonstration and for a choice scored after the query, so the two agree.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    """One example of a task: the values of the template's fields and its gold answer."""

    fields: Mapping[str, str]  # the values of the template's named fields
    target: str  # gold label (classification) or exact answer (generation)
    rationale: str = ""  # worked reasoning that leads to `target`, for chain-of-thought
    origin: str = ""  # where it came from: file, or generator and index


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _parse_fields(text: str) -> tuple[str, ...]:
    """The field names of a str.format-style template, in order of first appearance."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:  # a lone "{" or "}"
        raise ConfigError(
            f"template {_short(text)!r}: {e}; write literal braces doubled, {{{{ and }}}}"
        ) from None
    names: list[str] = []
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(
                f"template {_short(text)!r}: a field is a plain name such as {{text}}, without "
                f"index, conversion or format spec; got field {name!r}"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


class Template:
    """Text with named fields `{name}`; rendering checks that every field has a value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fields = _parse_fields(text)

    def check(self, available: Sequence[str], where: str = "the example") -> None:
        """ConfigError naming the first field of the template that `available` lacks."""
        missing = [f for f in self.fields if f not in available]
        if missing:
            has = ", ".join(sorted(available)) or "(no fields)"
            raise ConfigError(
                f"template {_short(self.text)!r} names the field {missing[0]!r}, which "
                f"{where} does not have (it has: {has}); fix the template or the data"
            )

    def render(self, values: Mapping[str, str]) -> str:
        self.check(list(values))
        return self.text.format_map({name: values[name] for name in self.fields})

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


@dataclass(frozen=True)
class Verbalizer:
    """Label → the words that stand for it; the first word is the one demonstrations show."""

    words: Mapping[str, tuple[str, ...]]  # label → one or several words (first = canonical)

    def __post_init__(self) -> None:
        if not self.words:
            raise ConfigError("a verbalizer needs at least one label")
        owner: dict[str, str] = {}
        for label, words in self.words.items():
            if not words or not all(isinstance(w, str) and w for w in words):
                raise ConfigError(f"verbalizer: label {label!r} needs one or more non-empty words")
            for w in words:
                if w in owner:
                    raise ConfigError(
                        f"verbalizer: the word {w!r} stands for both {owner[w]!r} and {label!r}"
                    )
                owner[w] = label

    @classmethod
    def identity(cls, labels: Sequence[str]) -> Verbalizer:
        """Every label is its own (single) word."""
        return cls({label: (label,) for label in labels})

    @property
    def labels(self) -> list[str]:
        return list(self.words)

    def word(self, label: str) -> str:
        if label not in self.words:
            raise ConfigError(f"label {label!r} is not in the verbalizer ({', '.join(self.words)})")
        return self.words[label][0]

    def label_of(self, text: str) -> str | None:
        """The label whose word begins `text` (longest word wins), or None."""
        text = text.strip().lower()
        best: tuple[int, str] | None = None
        for label, words in self.words.items():
            for w in words:
                if text.startswith(w.lower()) and (best is None or len(w) > best[0]):
                    best = (len(w), label)
        return best[1] if best else None


@dataclass(frozen=True)
class PromptFormat:
    """How examples become a prompt: the template, how answers follow, what goes between."""

    template: Template  # one example's fields, ending where its answer begins
    answer: Template = field(default_factory=lambda: Template(" {answer}"))  # after template
    instruction: str = ""  # text before the demonstrations ("" = none)
    separator: str = "\n\n"  # between the instruction, the demonstrations and the query

    def __post_init__(self) -> None:
        if self.answer.fields != ("answer",):
            raise ConfigError(
                f"the answer template {self.answer.text!r} must name exactly one field, {{answer}}"
            )

    def answer_text(self, answer: str) -> str:
        """What follows the template for this answer: a demonstration's tail, a scored choice."""
        return self.answer.render({"answer": answer})

    def demonstration(self, sample: Sample, answer: str) -> str:
        return self.template.render(sample.fields) + self.answer_text(answer)

    def render(self, query: Mapping[str, str], demos: Sequence[tuple[Sample, str]] = ()) -> str:
        """The prompt for `query` after the (sample, answer text) demonstrations."""
        parts = [self.instruction] if self.instruction else []
        parts += [self.demonstration(sample, answer) for sample, answer in demos]
        parts.append(self.template.render(query))
        return self.separator.join(parts)
