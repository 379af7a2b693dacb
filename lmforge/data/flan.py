"""FLAN-style instruction data: labelled examples through hand-written templates.

FLAN (Wei et al., 2021) turns labelled datasets into instructions with several phrasings per
task, varying where the input sits, how the options are shown and how the answer is worded.
A task's templates are one YAML file (templates/bbc_news.yaml); each is marked `seen` or
`heldout`, so a model can be trained on some phrasings and tested on ones it never read:

    Example(text, label) ──► template (random, among the phrasings asked for)
                             prompt.format(text, options)  ──► user turn
                             answer.format(label)          ──► assistant turn
                             meta {source: flan, task, template_id, phrasing, split,
                                   example_id, label}
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import arg, from_dict, read_yaml
from lmforge.data.instruct import Conversation, from_alpaca
from lmforge.data.labelled import Example, load_labelled
from lmforge.errors import ConfigError, DataError
from lmforge.registry import Registry

TEMPLATE_DIR = Path(__file__).parent / "templates"
PHRASINGS = ("seen", "heldout", "all")


@dataclass(frozen=True)
class PromptTemplate:
    id: str  # unique within the task; recorded in every record's meta
    phrasing: str  # seen (for training) | heldout (kept for testing)
    prompt: str  # the user turn: {text}, {options}, {options_or}, {options_lines}
    answer: str  # the assistant turn: {label}


@dataclass(frozen=True)
class FlanTask:
    task: str  # name recorded in meta
    dataset: str  # a labelled dataset (lmforge.data.labelled) or a JSONL file of text/label
    labels: list[str]  # every label of the dataset
    templates: list[PromptTemplate]  # the phrasings
    max_chars: int = 1000  # input text is cut to this many characters (at a word)
    description: str = ""  # one line for listings
    words: dict[str, str] | None = None  # label → the word options and answers use (名词)

    def word(self, label: str) -> str:
        return (self.words or {}).get(label, label)

    def phrasings(self, which: str) -> list[PromptTemplate]:
        if which not in PHRASINGS:
            raise ConfigError(f"phrasings {which!r} is not one of {', '.join(PHRASINGS)}")
        return [t for t in self.templates if which == "all" or t.phrasing == which]


FLAN_TASKS: Registry[Path] = Registry("FLAN task")
FLAN_TASKS.add("bbc-news", TEMPLATE_DIR / "bbc_news.yaml")
FLAN_TASKS.add("peoples-daily-pos", TEMPLATE_DIR / "peoples_daily_pos.yaml")


def _check_task(task: FlanTask, where: str) -> None:
    probe = {"text": "t", "options": "o", "options_or": "o", "options_lines": "o", "label": "l"}
    stray = sorted(set(task.words or {}) - set(task.labels))
    if stray:
        raise ConfigError(f"{where}: words for {stray}, which are not among labels {task.labels}")
    ids = [t.id for t in task.templates]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: template ids must be unique, got {ids}")
    for i, t in enumerate(task.templates):
        name = f"{where}: templates[{i}] ({t.id})"
        if t.phrasing not in ("seen", "heldout"):
            raise ConfigError(f"{name}.phrasing is {t.phrasing!r}; use seen or heldout")
        if "{text}" not in t.prompt or "{label}" not in t.answer:
            raise ConfigError(f"{name}: the prompt needs {{text}} and the answer {{label}}")
        for part in ("prompt", "answer"):
            try:
                getattr(t, part).format(**probe)
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(
                    f"{name}.{part}: bad placeholder {e}; use {sorted(probe)}"
                ) from None


def load_task(name_or_path: str | Path) -> FlanTask:
    """A registered task (bbc-news) or a YAML file of templates, checked field by field."""
    name = str(name_or_path)
    path = FLAN_TASKS.get(name) if name in FLAN_TASKS else Path(name)
    if not path.is_file():
        raise ConfigError(
            f"{name_or_path!s} is neither a registered task ({', '.join(FLAN_TASKS.names())}) "
            "nor a YAML file of templates"
        )
    task = from_dict(FlanTask, read_yaml(path), str(path))
    _check_task(task, str(path))
    return task


@dataclass
class FlanConfig:
    task: str = arg("bbc-news", aliases=("--templates",))  # a built-in task or a templates YAML
    split: str = "train"  # split of the labelled dataset: train | validation | test
    phrasings: str = "seen"  # which templates: seen | heldout | all
    max_records: int = arg(0, aliases=("--max",))  # at most this many records, seeded (0 = all)
    seed: int = 0  # seeds the sample, the template choice and the order of options
    max_chars: int | None = None  # cut the input text to this many characters (None = task's)


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return (cut[: cut.rfind(" ")] if " " in cut else cut) + " ..."


def _example_id(origin: str) -> str:
    return "/".join(Path(origin).parts[-2:])  # label folder/file, or file.jsonl:line


def flan_record(
    example: Example, template: PromptTemplate, task: FlanTask, rng: random.Random, meta: dict
) -> Conversation:
    """One example through one template; options listed in an order drawn from `rng`."""
    options = [task.word(label) for label in rng.sample(task.labels, len(task.labels))]
    fields = {
        "text": example.text,
        "options": ", ".join(options),
        "options_or": ", ".join(options[:-1]) + " or " + options[-1],
        "options_lines": "\n".join(f"- {o}" for o in options),
    }
    prompt = template.prompt.format(**fields)
    answer = template.answer.format(label=task.word(example.label))
    return from_alpaca(prompt, answer, meta=meta)


def build_flan(config: FlanConfig, examples: Sequence[Example] | None = None) -> list[Conversation]:
    """Instruction records from a labelled dataset (or the `examples` given), deterministic
    under `config.seed`."""
    task = load_task(config.task)
    templates = task.phrasings(config.phrasings)
    if not templates:
        raise ConfigError(f"task {task.task} has no {config.phrasings} templates")
    if examples is None:
        examples = load_labelled(task.dataset, config.split)
    unknown = sorted({e.label for e in examples} - set(task.labels))
    if unknown:
        raise DataError(f"labels {unknown} are not among the task's labels {task.labels}")
    rng = random.Random(config.seed)
    order = rng.sample(range(len(examples)), len(examples))
    if config.max_records:
        order = order[: config.max_records]
    max_chars = config.max_chars or task.max_chars
    records = []
    for i in order:
        ex = examples[i]
        template = rng.choice(templates)
        meta = {
            "source": "flan",
            "task": task.task,
            "template_id": template.id,
            "phrasing": template.phrasing,
            "split": config.split,
            "example_id": _example_id(ex.origin),
            "label": ex.label,
        }
        clipped = Example(_clip(ex.text, max_chars), ex.label, ex.origin)
        records.append(flan_record(clipped, template, task, rng, meta))
    return records
