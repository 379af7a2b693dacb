"""Chinese classification tasks whose answers are exact, read from People's Daily's own tags.

Each example is one sentence (cut at 。！？) and one word of it that occurs once there, and
the question is which of two tag classes the word belongs to; labels alternate so the
classes are balanced, and a sentence the paper repeats is used once.

    peoples-daily-pos    noun (n) or verb (v)? a word of two characters or more,
                         label words 名词 / 动词 (both start with the byte e5, so a
                         byte-level tokenizer's first label tokens are alike)
    peoples-daily-names  person (nr) or place (ns)? a name, each name used at most twice,
                         label words 人名 / 地名; a surname and the given name after it,
                         tagged apart in the corpus, are one name here

    句子：中共中央总书记、国家主席江泽民发表１９９８年新年讲话《迈向充满希望的新世纪》。
    词语：发表                                                        → verb (动词)

The first EXAMPLES sentences that qualify are used, then split like every labelled dataset
(data/labelled.py: test i % 10 == 0, validation i % 10 == 1, train otherwise, per class).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from lmforge.assets import asset_path
from lmforge.data.corpora import tagged_words
from lmforge.data.labelled import DATASETS, Example, stratified_split
from lmforge.data.text import read_utf8

EXAMPLES = 2000  # 1000 per class: 200 test, 200 validation, 1600 train
_ENDS = ("。", "！", "？")


@dataclass(frozen=True, eq=False)
class WordQuestion:
    """Which tag class does the marked word belong to?"""

    tags: dict[str, str]  # People's Daily tag → label, in the order labels alternate
    words: dict[str, str]  # label → its Chinese label word
    template: str  # the prompt after the example's text
    instruction: str  # one line that asks the question
    min_chars: int = 2  # shortest word asked about
    per_word: int = 0  # times one word may be asked about (0: no limit)


POS = WordQuestion(
    {"n": "noun", "v": "verb"}, {"noun": "名词", "verb": "动词"}, "{text}\n词性：",
    "判断词语在句子中是名词还是动词。",
)  # fmt: skip
NAMES = WordQuestion(
    {"nr": "person", "ns": "place"}, {"person": "人名", "place": "地名"}, "{text}\n类别：",
    "判断句子中的这个名称是人名还是地名。", per_word=2,
)  # fmt: skip
QUESTIONS = {"peoples-daily-pos": POS, "peoples-daily-names": NAMES}
POS_LABELS, CHINESE_WORDS, TEMPLATE = POS.tags, POS.words, POS.template


def _tagged_sentences(text: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(line number, [(word, tag), ...]) per sentence; a one-character surname and the given
    name after it (江/nr 泽民/nr) are one word."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        sentence: list[tuple[str, str]] = []
        for word, tag in tagged_words(line):
            if tag == "nr" and sentence and sentence[-1][1] == "nr" and len(sentence[-1][0]) == 1:
                sentence[-1] = (sentence[-1][0] + word, tag)
                continue
            sentence.append((word, tag))
            if word in _ENDS:
                yield lineno, sentence
                sentence = []
        if sentence:
            yield lineno, sentence


@cache
def word_examples(question: WordQuestion, limit: int = EXAMPLES) -> tuple[Example, ...]:
    """The first `limit` examples of `question`, its labels alternating."""
    path = asset_path("peoples-daily")
    labels = list(question.tags.values())
    examples: list[Example] = []
    seen: set[str] = set()  # the paper repeats some sentences: each is asked about once
    asked: Counter[str] = Counter()
    for lineno, tagged in _tagged_sentences(read_utf8(path) or ""):
        want = labels[len(examples) % len(labels)]
        sentence = "".join(w for w, _ in tagged)
        if sentence in seen:
            continue
        seen.add(sentence)
        words = [
            w
            for w, tag in tagged
            if question.tags.get(tag) == want
            and len(w) >= question.min_chars
            and sentence.count(w) == 1
            and not (question.per_word and asked[w] >= question.per_word)
        ]
        if words and len(sentence) <= 80:
            asked[words[0]] += 1
            text = f"句子：{sentence}\n词语：{words[0]}"
            examples.append(Example(text, want, f"{path}:{lineno}"))
        if len(examples) == limit:
            break
    return tuple(examples)


def pos_examples(limit: int = EXAMPLES) -> tuple[Example, ...]:
    return word_examples(POS, limit)


def _register(name: str, question: WordQuestion) -> None:
    def load(split: str) -> list[Example]:
        return stratified_split(list(word_examples(question)), split, seed=0)

    load.__doc__ = f"{name}: {' or '.join(question.words.values())}? (see the module doc)"
    DATASETS.add(name, load)


for _name, _question in QUESTIONS.items():
    _register(_name, _question)
