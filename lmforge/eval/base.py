"""What a task is, the settings of an evaluation, and what it returns.

A task is its data, its prompt format and its scoring. The scoring is a runner, chosen
by the task's `kind` from a registry:

    TASKS[name] ─► Task(kind, data, format, ...) ─► RUNNERS[kind](model, tokenizer, task, settings)
                                                       ├─ choice      log-likelihood of each label
                                                       ├─ generate    generate, parse, compare
                                                       └─ perplexity  NLL of a corpus
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import ConfigError
from lmforge.prompting.template import PromptFormat, Sample, Verbalizer
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer


@dataclass(frozen=True)
class Task:
    name: str  # the registry name (`lmforge eval --task NAME`)
    kind: str  # a RUNNERS name: choice | generate | perplexity
    description: str  # one line for `lmforge eval --task list`
    test: Callable[[], list[Sample]] | None = None  # the examples that are scored
    pool: Callable[[], list[Sample]] | None = None  # where demonstrations are drawn from
    format: PromptFormat | None = None  # how examples become a prompt
    verbalizer: Verbalizer | None = None  # choice tasks: label → words
    metrics: tuple[str, ...] = ("accuracy",)  # METRICS names, each averaged over examples
    extract: str = "first-number"  # generate: EXTRACTORS name that reads a direct answer
    stop: tuple[str, ...] = ("\n",)  # generate: strings that end a direct answer
    cot_stop: tuple[str, ...] = ("\n\n",)  # generate: strings that end a rationale
    max_new_tokens: int = 16  # generate: tokens for a direct answer
    cot_new_tokens: int = 96  # generate: tokens for a chain-of-thought rationale
    long_field: str = ""  # the field `truncate` clips ("" = none)
    truncate: int = 0  # default token limit of long_field (0 = keep whole)
    corpus: str = ""  # perplexity: corpus name, file or folder


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.add(task.name, task)


@dataclass
class EvalSettings:
    shots: int = 0  # demonstrations per prompt (K); 0 = zero-shot
    selection: str = "random"  # demonstration selection: random | fixed | balanced | nearest
    seed: int = 0  # seeds demonstration draws, test subsampling and sampling
    limit: int = 0  # score at most this many test examples, a seeded sample (0 = all)
    pool: int = 0  # draw demonstrations from at most this many pool examples (0 = all)
    truncate: int = 0  # tokens kept of each example's long field (0 = task default, -1 = all)
    normalize: str = "sum"  # choice score: sum | mean (per token) | char (per character)
    calibrate: bool = False  # contextual calibration of the class probabilities (choice tasks)
    reasoning: str = "direct"  # generate tasks: direct | cot (chain-of-thought)
    samples: int = 1  # self-consistency: sampled answers per question, majority vote (1 = greedy)
    temperature: float = 0.7  # sampling temperature when samples > 1
    max_new_tokens: int = 0  # generated tokens per answer (0 = the task's default)
    batch_size: int = 8  # rows per forward pass
    max_length: int = 0  # longest row the model reads; perplexity window (0 = the model's)
    max_tokens: int = 0  # perplexity: score at most this many tokens (0 = all)
    data: str = ""  # perplexity: corpus name, text file or folder (overrides the task's)

    def validate(self) -> None:
        from lmforge.eval.loglik import NORMALIZERS
        from lmforge.prompting import REASONING, SELECTORS

        for name, registry in [
            ("selection", SELECTORS),
            ("normalize", NORMALIZERS),
            ("reasoning", REASONING),
        ]:
            if getattr(self, name) not in registry:
                raise ConfigError(
                    f"{name} {getattr(self, name)!r} is unknown; choose from "
                    f"{', '.join(registry.names())}"
                )
        checks = [
            ("shots", self.shots >= 0, "must be >= 0"),
            ("limit", self.limit >= 0, "must be >= 0 (0 = all)"),
            ("pool", self.pool >= 0, "must be >= 0 (0 = all)"),
            ("truncate", self.truncate >= -1, "must be >= -1"),
            ("samples", self.samples >= 1, "must be >= 1"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 0, "must be >= 0"),
            ("max_length", self.max_length >= 0, "must be >= 0"),
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name} {rule}, got {getattr(self, name)!r}")


@dataclass
class TaskResult:
    task: str  # task name
    metrics: dict[str, float]  # metric name → mean over the scored examples
    n: int  # examples scored (tokens, for perplexity)
    seconds: float  # wall time of the evaluation
    settings: dict[str, Any]  # the EvalSettings used, as a mapping
    predictions: list[dict[str, Any]] = field(default_factory=list)  # one record per example
    example_prompt: str = ""  # the first prompt, to inspect the format
    kind: str = ""  # the task's kind (choice, generate, perplexity), set by evaluate()


Runner = Callable[..., TaskResult]  # (model, tokenizer, task, settings, *, embed, progress)
RUNNERS: Registry[Runner] = Registry("task kind")


def seeded_sample(items: list, n: int, seed: int) -> list:
    """At most n items, drawn with the seed and kept in their original order (0 = all)."""
    if not n or n >= len(items):
        return items
    picks = random.Random(seed).sample(range(len(items)), n)
    return [items[i] for i in sorted(picks)]


def clip_field(sample: Sample, name: str, tokenizer: Tokenizer, tokens: int) -> Sample:
    """The sample with field `name` cut to its first `tokens` tokens."""
    ids = tokenizer.encode(sample.fields[name])
    if len(ids) <= tokens:
        return sample
    text = tokenizer.decode(ids[:tokens]).rstrip("\ufffd")  # no half character at the cut
    fields = {**sample.fields, name: text}
    return Sample(fields, sample.target, sample.rationale, sample.origin)


def task_samples(
    task: Task, tokenizer: Tokenizer, s: EvalSettings
) -> tuple[list[Sample], list[Sample]]:
    """(test examples, demonstration pool) after limit, pool size and truncation."""
    if task.test is None or task.format is None:
        raise ConfigError(f"task {task.name!r} ({task.kind}) has no examples or prompt format")
    test = seeded_sample(task.test(), s.limit, s.seed)
    pool = seeded_sample(task.pool(), s.pool, s.seed) if task.pool and s.shots else []
    tokens = {0: task.truncate, -1: 0}.get(s.truncate, s.truncate)
    if tokens and task.long_field:
        test = [clip_field(x, task.long_field, tokenizer, tokens) for x in test]
        pool = [clip_field(x, task.long_field, tokenizer, tokens) for x in pool]
    for x in test[:1] + pool[:1]:
        task.format.template.check(list(x.fields), f"an example of task {task.name!r}")
    return test, pool


def select_demos(
    task: Task,
    test: list[Sample],
    pool: list[Sample],
    s: EvalSettings,
    embed: Callable | None = None,
) -> list[list[Sample]]:
    """The demonstrations of each test example (empty lists when zero-shot)."""
    from lmforge.prompting.select import SelectionConfig, check_shots, make_selector

    check_shots(s.shots, pool)
    if s.shots == 0:
        return [[] for _ in test]
    if s.selection == "nearest" and embed is None:
        from lmforge.prompting.embed import SentenceEncoder

        embed = SentenceEncoder()
    key = task.long_field or task.format.template.fields[0]
    selector = make_selector(s.selection, pool, SelectionConfig(s.seed, key, embed=embed))
    return [selector.select(query, i, s.shots) for i, query in enumerate(test)]
