"""peoples-daily-pos: is the marked word a noun or a verb? A Chinese classification task
whose answers are exact, read from People's Daily's own part-of-speech tags.

Each example is one sentence (cut at 。！？) and one word of it of two characters or more,
tagged n (noun) or v (verb) and occurring once in the sentence; labels alternate so the
classes are balanced, and a sentence the paper repeats is used once. The label words are
Chinese (名词 noun, 动词 verb: both start with the byte e5, so a byte-level tokenizer's
first label tokens are alike):

    句子：中共中央总书记、国家主席江泽民发表１９９８年新年讲话《迈向充满希望的新世纪》。
    词语：发表                                                            → verb (动词)

The first EXAMPLES sentences that qualify are used, then split like every labelled dataset
(data/labelled.py: test i % 10 == 0, validation i % 10 == 1, train otherwise, per class).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

from lmforge.assets import asset_path
from lmforge.data.corpora import tagged_words
from lmforge.data.labelled import DATASETS, Example, stratified_split
from lmforge.data.text import read_utf8

EXAMPLES = 2000  # 1000 per class: 200 test, 200 validation, 1600 train
POS_LABELS = {"n": "noun", "v": "verb"}  # People's Daily tag → label
CHINESE_WORDS = {"noun": "名词", "verb": "动词"}  # label → its Chinese label word
TEMPLATE = "{text}\n词性："  # "part of speech:"

_ENDS = ("。", "！", "？")


def _tagged_sentences(text: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(line number, [(word, tag), ...]) per sentence of the tagged corpus."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        sentence: list[tuple[str, str]] = []
        for word, tag in tagged_words(line):
            sentence.append((word, tag))
            if word in _ENDS:
                yield lineno, sentence
                sentence = []
        if sentence:
            yield lineno, sentence


@cache
def pos_examples(limit: int = EXAMPLES) -> tuple[Example, ...]:
    """The first `limit` examples, alternating noun and verb."""
    path = asset_path("peoples-daily")
    examples: list[Example] = []
    seen: set[str] = set()  # the paper repeats some sentences: each is asked about once
    for lineno, tagged in _tagged_sentences(read_utf8(path) or ""):
        want = "noun" if len(examples) % 2 == 0 else "verb"
        sentence = "".join(w for w, _ in tagged)
        if sentence in seen:
            continue
        seen.add(sentence)
        words = [
            w
            for w, tag in tagged
            if POS_LABELS.get(tag) == want and len(w) >= 2 and sentence.count(w) == 1
        ]
        if words and len(sentence) <= 80:
            text = f"句子：{sentence}\n词语：{words[0]}"
            examples.append(Example(text, want, f"{path}:{lineno}"))
        if len(examples) == limit:
            break
    return tuple(examples)


@DATASETS.register("peoples-daily-pos")
def peoples_daily_pos(split: str) -> list[Example]:
    """People's Daily noun-or-verb questions (see the module doc)."""
    return stratified_split(list(pos_examples()), split, seed=0)
