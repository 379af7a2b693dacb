"""The built-in tasks; importing lmforge.eval registers them.

bbc-news           choice      BBC News topics (the fixed split of data/labelled.py):
                               test = the 225 test articles, demonstrations = train
peoples-daily-pos  choice      is the marked word of a People's Daily sentence a noun or a
                               verb? (data/chinese_pos.py), label words 名词 / 动词: test = 200
                               questions, demonstrations = train
peoples-daily-names  choice    is the marked name a person or a place? label words 人名 / 地名
arithmetic-1/2/3   generate    word problems with 1, 2 or 3 operations: 100 test problems
arithmetic                     per level (seed 0), 100 demonstrations per level (seed 1,
                               minus any test question); "arithmetic" mixes the levels
ppl-shakespeare    perplexity  Shakespeare's works (data/corpora.py)
ppl-peoples-daily  perplexity  People's Daily, January 1998
perplexity         perplexity  any corpus name, file or folder given as `data`
"""

from __future__ import annotations

from functools import cache

from lmforge.data.chinese_pos import QUESTIONS, WordQuestion
from lmforge.data.labelled import load_labelled
from lmforge.eval.arithmetic import LEVELS, problem_samples
from lmforge.eval.base import ChoiceTask, GenerationTask, PerplexityTask, register_task
from lmforge.prompting.template import PromptFormat, Sample, Template, Verbalizer

BBC_LABELS = ("business", "entertainment", "politics", "sport", "tech")
BBC_FORMAT = PromptFormat(
    Template("Article: {text}\nTopic:"),
    instruction=(
        "Classify the topic of each news article as business, entertainment, politics, "
        "sport or tech."
    ),
)
ARITHMETIC_FORMAT = PromptFormat(Template("Question: {question}\nAnswer:"))
PER_LEVEL = 100


def _labelled(source: str, split: str) -> list[Sample]:
    examples = load_labelled(source, split)
    return [Sample({"text": e.text}, e.label, origin=e.origin) for e in examples]


def _bbc(split: str) -> list[Sample]:
    return _labelled("bbc-news", split)


register_task(
    ChoiceTask(
        name="bbc-news",
        description="BBC News topic of an article (5 labels), scored by label-word likelihood",
        test=lambda: _bbc("test"),
        pool=lambda: _bbc("train"),
        format=BBC_FORMAT,
        verbalizer=Verbalizer.identity(BBC_LABELS),
        metrics=("accuracy",),
        long_field="text",
        truncate=128,
    )
)


def _chinese_task(name: str, question: WordQuestion) -> ChoiceTask:
    pair = " or ".join(question.tags.values())
    return ChoiceTask(
        name=name,
        description=f"{pair}? a word of a People's Daily sentence, Chinese label words",
        test=lambda: _labelled(name, "test"),
        pool=lambda: _labelled(name, "train"),
        format=PromptFormat(Template(question.template), instruction=question.instruction),
        verbalizer=Verbalizer({label: (word,) for label, word in question.words.items()}),
        metrics=("accuracy",),
    )


for _name, _question in QUESTIONS.items():
    register_task(_chinese_task(_name, _question))


@cache
def _arithmetic(levels: tuple[int, ...], split: str) -> tuple[Sample, ...]:
    test = problem_samples(PER_LEVEL, levels, seed=0)
    if split == "test":
        return tuple(test)
    asked = {s.fields["question"] for s in test}
    return tuple(problem_samples(PER_LEVEL, levels, seed=1, exclude=asked))


def _arithmetic_task(name: str, levels: tuple[int, ...], what: str) -> GenerationTask:
    return GenerationTask(
        name=name,
        description=f"arithmetic word problems, {what}; exact numeric answer",
        test=lambda: list(_arithmetic(levels, "test")),
        pool=lambda: list(_arithmetic(levels, "pool")),
        format=ARITHMETIC_FORMAT,
        metrics=("accuracy",),
        extract="first-number",
        stop=("\n",),
        cot_stop=("\n\n", "Question:"),
        max_new_tokens=8,
        cot_new_tokens=80,
    )


for _level in LEVELS:
    register_task(_arithmetic_task(f"arithmetic-{_level}", (_level,), f"{_level} operation(s)"))
register_task(_arithmetic_task("arithmetic", LEVELS, "levels 1-3 mixed"))

for _name, _corpus in [("ppl-shakespeare", "shakespeare"), ("ppl-peoples-daily", "peoples-daily")]:
    register_task(PerplexityTask(_name, f"perplexity on the {_corpus} corpus", corpus=_corpus))
register_task(PerplexityTask("perplexity", "perplexity on `data`: a corpus, file or folder"))
