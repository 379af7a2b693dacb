"""Your own evaluation task in a file, without touching the package (as lm-eval's YAML tasks).

    lmforge eval --task my-task.yaml      a task file (below)
    lmforge eval --task records.jsonl     records alone: {"text", "label"} → a choice task,
                                          {"question", "answer"} → a generation task,
                                          {"text"} only → perplexity

A task file names its data and says how to score it; a relative path is read from the
file's folder:

    name: product-reviews                 # default: the file's name
    kind: choice                          # choice | generate | perplexity
    data: reviews.jsonl                   # JSONL records; their fields fill the template
    template: "Review: {text}\nSentiment:"
    labels: {positive: [good, great], negative: [bad]}   # choice: label → its words
    label_field: label                    # choice: the record field holding the label
    pool: ""                              # demonstrations from this file ("" = split `data`)

A generation task names `answer_field`, `extract` (how the answer is read from the
output), `stop` and `max_new_tokens`; a perplexity task only `data` (a corpus name, file or
folder). Without a `pool` file, a seeded fifth of the records (of each label, for a choice
task) is kept out of the test set as the demonstration pool, so a demonstration is never
the example it answers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import load
from lmforge.errors import ConfigError, DataError
from lmforge.eval.base import ChoiceTask, GenerationTask, PerplexityTask, Task
from lmforge.prompting.cot import EXTRACTORS
from lmforge.prompting.template import PromptFormat, Sample, Template, Verbalizer
from lmforge.registry import Registry

TASK_FILE_SUFFIXES = (".yaml", ".yml", ".jsonl")


@dataclass
class TaskFile:
    name: str = ""  # the task's name in results (default: the file's name)
    description: str = ""  # one line for `lmforge eval --task list`
    kind: str = "choice"  # choice | generate | perplexity
    data: str = ""  # JSONL records (choice, generate), or a corpus/file/folder (perplexity)
    template: str = "{text}\nAnswer:"  # one example's prompt; {field} is a record's field
    instruction: str = ""  # text before the demonstrations
    labels: dict[str, list[str]] = field(default_factory=dict)  # choice: label → words
    label_field: str = "label"  # choice: the record field holding the label
    answer_field: str = "answer"  # generate: the record field holding the gold answer
    extract: str = "first-number"  # generate: how the answer is read from the output
    stop: list[str] = field(default_factory=lambda: ["\n"])  # generate: text that ends it
    max_new_tokens: int = 16  # generate: tokens for an answer
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])  # METRICS names
    pool: str = ""  # JSONL of demonstrations ("" = every fifth record of `data`)
    split_seed: int = 0  # seeds which records form the pool


def _records(path: Path, origin: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{origin}: data file {path} does not exist", fix="fix the path in {data}")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{n}: a record must be a JSON object of fields")
        records.append({**record, "_origin": f"{path}:{n}"})
    if not records:
        raise DataError(f"{path}: the file is empty: it holds no records")
    return records


def _sample(record: dict[str, Any], target_field: str, template: Template) -> Sample:
    missing = [f for f in (*template.fields, target_field) if f not in record]
    if missing:
        raise DataError(f"{record['_origin']}: the record has no field {missing[0]!r}")
    fields = {k: str(v) for k, v in record.items() if k != "_origin"}
    return Sample(fields, str(record[target_field]), origin=record["_origin"])


def _split(samples: list[Sample], seed: int, by_label: bool) -> tuple[list[Sample], list[Sample]]:
    """(pool, test): a seeded fifth goes to the pool (within each label, for choices)."""
    pool: list[Sample] = []
    groups = sorted({s.target for s in samples}) if by_label else [None]
    for target in groups:
        members = [s for s in samples if target is None or s.target == target]
        order = random.Random(f"{seed}:{target}").sample(range(len(members)), len(members))
        pool += [members[j] for i, j in enumerate(order) if i % 5 == 4]
    chosen = {id(s) for s in pool}
    return pool, [s for s in samples if id(s) not in chosen]


def _example_task(spec: TaskFile, base: Path, origin: str, target_field: str) -> dict[str, Any]:
    template = Template(spec.template)
    samples = [_sample(r, target_field, template) for r in _records(base / spec.data, origin)]
    if spec.pool:
        pool = [_sample(r, target_field, template) for r in _records(base / spec.pool, origin)]
        test = samples
    else:
        pool, test = _split(samples, spec.split_seed, by_label=spec.kind == "choice")
    return dict(
        name=spec.name,
        description=spec.description or f"{spec.kind} task from {origin}",
        test=lambda: test,
        pool=lambda: pool,
        format=PromptFormat(template, instruction=spec.instruction),
        metrics=tuple(spec.metrics),
    )


def _choice(spec: TaskFile, base: Path, origin: str) -> Task:
    common = _example_task(spec, base, origin, spec.label_field)
    labels = spec.labels or {s.target: [s.target] for s in common["test"]()}
    unknown = sorted({s.target for s in common["test"]()} - set(labels))
    if unknown:
        raise ConfigError(f"{origin}: label {unknown[0]!r} of the data is not in labels")
    return ChoiceTask(**common, verbalizer=Verbalizer({k: tuple(v) for k, v in labels.items()}))


def _generate(spec: TaskFile, base: Path, origin: str) -> Task:
    if spec.extract not in EXTRACTORS:
        raise ConfigError(f"{origin}: extract {spec.extract!r} is unknown; choose from "
                          f"{', '.join(EXTRACTORS.names())}")  # fmt: skip
    return GenerationTask(
        **_example_task(spec, base, origin, spec.answer_field),
        extract=spec.extract,
        stop=tuple(spec.stop),
        max_new_tokens=spec.max_new_tokens,
    )


def _perplexity(spec: TaskFile, base: Path, origin: str) -> Task:
    corpus = str(base / spec.data) if (base / spec.data).exists() else spec.data
    return PerplexityTask(spec.name, spec.description or f"perplexity on {corpus}", corpus=corpus)


FILE_KINDS: Registry[Any] = Registry("task file kind")
FILE_KINDS.add("choice", _choice)
FILE_KINDS.add("generate", _generate)
FILE_KINDS.add("perplexity", _perplexity)


def is_task_file(name: str) -> bool:
    return name.endswith(TASK_FILE_SUFFIXES)


def load_task_file(path: str | Path) -> Task:
    """The task a YAML task file or a JSONL file of records defines."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task file {path} does not exist", fix="check the path in {task}")
    if path.suffix == ".jsonl":
        spec = _infer(path)
    else:
        spec = load(TaskFile, path)
        if not spec.data:
            raise ConfigError(f"{path}: data is empty", fix="name the records' file in {data}")
    spec.name = spec.name or path.stem
    if spec.kind not in FILE_KINDS:
        raise ConfigError(f"{path}: kind {spec.kind!r} is unknown; choose from "
                          f"{', '.join(FILE_KINDS.names())}")  # fmt: skip
    return FILE_KINDS.get(spec.kind)(spec, path.parent, str(path))


def _infer(path: Path) -> TaskFile:
    """A task file for a JSONL of records, from the fields of its first record."""
    first = _records(path, str(path))[0]
    data = path.name
    if "label" in first and "text" in first:
        return TaskFile(kind="choice", data=data, template="{text}\nAnswer:")
    if "question" in first and "answer" in first:
        return TaskFile(kind="generate", data=data, template="Question: {question}\nAnswer:")
    if "text" in first:
        return TaskFile(kind="perplexity", data=data)
    raise DataError(
        f"{path}:1: records need text and label (choice), question and answer (generation) "
        "or text (perplexity); for other fields write a task file (docs/eval.md)"
    )
