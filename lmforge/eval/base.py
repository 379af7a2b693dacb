"""What a task is, the settings of an evaluation, and what it returns.

A task is its data, its prompt format and its scoring. Each kind of task is one entry of
KINDS: its Task class (the fields only that kind has), its settings and its runner:

    TASKS[name] ─► Task ─► KINDS[task.kind].run(model, tokenizer, task, settings)
                             ├─ choice      ChoiceTask      log-likelihood of each label
                             ├─ generate    GenerationTask  generate, parse, compare
                             └─ perplexity  PerplexityTask  NLL of a corpus

EvalSettings holds what every kind reads (shots, seed, batch size, ...) and one part per
kind (`choice`, `generate`, `perplexity`); `EvalSettings.from_fields(calibrate=True, ...)`
sorts flat field names into their parts, as `lmforge eval --calibrate true` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lmforge.data.subsample import seeded_sample
from lmforge.errors import ConfigError
from lmforge.eval.loglik import NORMALIZERS
from lmforge.prompting import REASONING, SELECTORS, SentenceEncoder
from lmforge.prompting.select import SelectionConfig, check_shots, make_selector
from lmforge.prompting.template import PromptFormat, Sample, Verbalizer
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer

# ── tasks ───────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Task:
    kind: ClassVar[str]  # the KINDS entry that scores it
    name: str  # the registry name (`lmforge eval --task NAME`)
    description: str  # one line for `lmforge eval --task list`


@dataclass(frozen=True)
class ExampleTask(Task):
    """A task scored example by example: test examples, demonstrations, a prompt format."""

    test: Callable[[], list[Sample]] | None = None  # the examples that are scored
    pool: Callable[[], list[Sample]] | None = None  # where demonstrations are drawn from
    format: PromptFormat | None = None  # how examples become a prompt
    metrics: tuple[str, ...] = ("accuracy",)  # METRICS names, each averaged over examples
    long_field: str = ""  # the field `truncate` clips ("" = none)
    truncate: int = 0  # default token limit of long_field (0 = keep whole)


@dataclass(frozen=True)
class ChoiceTask(ExampleTask):
    kind: ClassVar[str] = "choice"
    verbalizer: Verbalizer | None = None  # label → words


@dataclass(frozen=True)
class GenerationTask(ExampleTask):
    kind: ClassVar[str] = "generate"
    extract: str = "first-number"  # EXTRACTORS name that reads a direct answer
    stop: tuple[str, ...] = ("\n",)  # strings that end a direct answer
    cot_stop: tuple[str, ...] = ("\n\n",)  # strings that end a rationale
    max_new_tokens: int = 16  # tokens for a direct answer
    cot_new_tokens: int = 96  # tokens for a chain-of-thought rationale


@dataclass(frozen=True)
class PerplexityTask(Task):
    kind: ClassVar[str] = "perplexity"
    corpus: str = ""  # corpus name, file or folder ("" = the `data` setting)


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.add(task.name, task)


# ── settings ────────────────────────────────────────────────────────────────────────────────


@dataclass
class ChoiceSettings:
    normalize: str = "sum"  # choice score: sum | mean (per token) | char (per character)
    calibrate: bool = False  # contextual calibration of the class probabilities (choice tasks)


@dataclass
class GenerationSettings:
    reasoning: str = "direct"  # generate tasks: direct | cot (chain-of-thought)
    samples: int = 1  # self-consistency: sampled answers per question, majority vote (1 = greedy)
    temperature: float = 0.7  # sampling temperature when samples > 1
    max_new_tokens: int = 0  # generated tokens per answer (0 = the task's default)


@dataclass
class PerplexitySettings:
    max_tokens: int = 0  # perplexity: score at most this many tokens (0 = all)
    data: str = ""  # perplexity: corpus name, text file or folder (overrides the task's)


@dataclass
class CommonSettings:
    shots: int = 0  # demonstrations per prompt (K); 0 = zero-shot
    selection: str = "random"  # demonstration selection: random | fixed | balanced | nearest
    seed: int = 0  # seeds demonstration draws, test subsampling and sampling
    limit: int = 0  # score at most this many test examples, a seeded sample (0 = all)
    pool: int = 0  # draw demonstrations from at most this many pool examples (0 = all)
    truncate: int = 0  # tokens kept of each example's long field (0 = task default, -1 = all)
    batch_size: int = 8  # rows per forward pass
    max_length: int = 0  # longest row the model reads; perplexity window (0 = the model's)


PARTS = {"choice": ChoiceSettings, "generate": GenerationSettings, "perplexity": PerplexitySettings}


@dataclass
class EvalSettings(CommonSettings):
    choice: ChoiceSettings = field(default_factory=ChoiceSettings)
    generate: GenerationSettings = field(default_factory=GenerationSettings)
    perplexity: PerplexitySettings = field(default_factory=PerplexitySettings)

    @classmethod
    def from_fields(cls, **fields: Any) -> EvalSettings:
        """Settings from flat field names (`shots=4, calibrate=True`), each into its part."""
        parts: dict[str, dict[str, Any]] = {name: {} for name in PARTS}
        common = {f.name for f in dataclasses.fields(CommonSettings)}
        owner = {f.name: p for p, c in PARTS.items() for f in dataclasses.fields(c)}
        top = {}
        for name, value in fields.items():
            if name in common:
                top[name] = value
            elif name in owner:
                parts[owner[name]][name] = value
            else:
                known = ", ".join(sorted(common | set(owner)))
                raise ConfigError(f"unknown evaluation setting {name!r}; valid: {known}")
        return cls(**top, **{p: PARTS[p](**values) for p, values in parts.items()})

    def record(self, *parts: Any) -> dict[str, Any]:
        """The common settings and the given parts, as one flat mapping (for results)."""
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(CommonSettings)}
        return {k: v for d in (common, *map(dataclasses.asdict, parts)) for k, v in d.items()}

    def validate(self) -> None:
        v = self.record(self.choice, self.generate, self.perplexity)
        for name, registry in [
            ("selection", SELECTORS),
            ("normalize", NORMALIZERS),
            ("reasoning", REASONING),
        ]:
            if v[name] not in registry:
                raise ConfigError(
                    f"{name} {v[name]!r} is unknown; choose from {', '.join(registry.names())}"
                )
        checks = [
            ("shots", v["shots"] >= 0, "must be >= 0"),
            ("limit", v["limit"] >= 0, "must be >= 0 (0 = all)"),
            ("pool", v["pool"] >= 0, "must be >= 0 (0 = all)"),
            ("truncate", v["truncate"] >= -1, "must be >= -1"),
            ("samples", v["samples"] >= 1, "must be >= 1"),
            ("temperature", v["temperature"] > 0, "must be > 0"),
            ("batch_size", v["batch_size"] >= 1, "must be >= 1"),
            ("max_new_tokens", v["max_new_tokens"] >= 0, "must be >= 0"),
            ("max_length", v["max_length"] >= 0, "must be >= 0"),
            ("max_tokens", v["max_tokens"] >= 0, "must be >= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name} {rule}, got {v[name]!r}")


# ── results and kinds ───────────────────────────────────────────────────────────────────────


@dataclass
class TaskResult:
    task: str  # task name
    metrics: dict[str, float]  # metric name → mean over the scored examples
    n: int  # examples scored (tokens, for perplexity)
    seconds: float  # wall time of the evaluation
    settings: dict[str, Any]  # the settings this kind read, as one flat mapping
    predictions: list[dict[str, Any]] = field(default_factory=list)  # one record per example
    example_prompt: str = ""  # the first prompt, to inspect the format
    kind: str = ""  # the task's kind (a KINDS name), set by evaluate()


Runner = Callable[..., TaskResult]  # (model, tokenizer, task, settings, *, embed, progress)


@dataclass(frozen=True)
class TaskKind:
    run: Runner  # scores a task of this kind
    describe: Callable[[dict[str, Any]], str]  # result settings → a phrase for results.md


KINDS: Registry[TaskKind] = Registry("task kind")


# ── what the example-by-example kinds share ─────────────────────────────────────────────────


def clip_field(sample: Sample, name: str, tokenizer: Tokenizer, tokens: int) -> Sample:
    """The sample with field `name` cut to its first `tokens` tokens."""
    ids = tokenizer.encode(sample.fields[name])
    if len(ids) <= tokens:
        return sample
    text = tokenizer.decode(ids[:tokens]).rstrip("\ufffd")  # no half character at the cut
    fields = {**sample.fields, name: text}
    return Sample(fields, sample.target, sample.rationale, sample.origin)


def task_samples(
    task: ExampleTask, tokenizer: Tokenizer, s: EvalSettings
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
    task: ExampleTask,
    test: list[Sample],
    pool: list[Sample],
    s: EvalSettings,
    embed: Callable | None = None,
) -> list[list[Sample]]:
    """The demonstrations of each test example (empty lists when zero-shot)."""
    check_shots(s.shots, pool)
    if s.shots == 0:
        return [[] for _ in test]
    if s.selection == "nearest" and embed is None:
        embed = SentenceEncoder()
    key = task.long_field or task.format.template.fields[0]
    selector = make_selector(s.selection, pool, SelectionConfig(s.seed, key, embed=embed))
    return [selector.select(query, i, s.shots) for i, query in enumerate(test)]


def shots_phrase(settings: dict[str, Any]) -> str:
    """'4-shot random', '0-shot': the demonstrations part of a results.md row."""
    text = f"{settings['shots']}-shot"
    return text + (f" {settings['selection']}" if settings["shots"] else "")
