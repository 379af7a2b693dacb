"""Building instruction data: from labelled datasets through templates (FLAN), and by the
model itself (Self-Instruct).

FLAN (Wei et al. 2021, "Finetuned Language Models Are Zero-Shot Learners") turns labelled
datasets into instructions with several hand-written phrasings per task, varying where the
input sits, how the options are shown and how the answer is worded. A task's templates are
one YAML file (see templates/bbc_news.yaml); each is marked `seen` or `heldout`, so a model
can be trained on some phrasings and tested on phrasings it has never read:

    Example(text, label) ──► template (random, among the phrasings asked for)
                             prompt.format(text, options)  ──► user turn
                             answer.format(label)          ──► assistant turn
                             meta {source: flan, task, template_id, phrasing, split,
                                   example_id, label}

Self-Instruct (Wang et al. 2022) grows a pool of tasks from a few seeds: the model is shown
k tasks from the pool and writes more; a new task joins the pool only if it passes the
filters, so the pool stays diverse:

    seeds ──► pool ──sample k──► prompt ──generate_fn──► parse ──► filters ──► pool + record
               ▲                                                     │
               └─────────────────────────────────────────────────────┘
    filters: format (non-empty parts, no images/files/..., starts with a letter),
             length (instruction words, output chars), ROUGE-L < 0.7 with every pool task

`generate_fn(prompt) -> str` is injected: tests pass a fake, `model_generate_fn` wraps a
real model.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import from_dict, read_yaml
from lmforge.data.instruct import Conversation, from_alpaca
from lmforge.data.labelled import Example, load_labelled
from lmforge.errors import ConfigError, DataError
from lmforge.eval.metrics import rouge_l
from lmforge.registry import Registry

TEMPLATE_DIR = Path(__file__).parent / "templates"
PHRASINGS = ("seen", "heldout", "all")

# ── FLAN: templates over labelled data ───────────────────────────────────────────────────


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
    labels: list[str]  # every label, in the words the answers use
    templates: list[PromptTemplate]  # the phrasings
    max_chars: int = 1000  # input text is cut to this many characters (at a word)
    description: str = ""  # one line for listings

    def phrasings(self, which: str) -> list[PromptTemplate]:
        if which not in PHRASINGS:
            raise ConfigError(f"phrasings {which!r} is not one of {', '.join(PHRASINGS)}")
        return [t for t in self.templates if which == "all" or t.phrasing == which]


TASKS: Registry[Path] = Registry("instruction task")
TASKS.add("bbc-news", TEMPLATE_DIR / "bbc_news.yaml")


def _check_task(task: FlanTask, where: str) -> None:
    probe = {"text": "t", "options": "o", "options_or": "o", "options_lines": "o", "label": "l"}
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
    path = TASKS.get(str(name_or_path)) if str(name_or_path) in TASKS else Path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"{name_or_path!s} is neither a registered task ({', '.join(TASKS.names())}) "
            "nor a YAML file of templates"
        )
    task = from_dict(FlanTask, read_yaml(path), str(path))
    _check_task(task, str(path))
    return task


@dataclass
class FlanConfig:
    task: str = "bbc-news"  # a registered task or a YAML file of templates
    split: str = "train"  # split of the labelled dataset: train | validation | test
    phrasings: str = "seen"  # which templates: seen | heldout | all
    max_records: int = 0  # at most this many records, from a seeded sample (0 = all)
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
    options = rng.sample(task.labels, len(task.labels))
    fields = {
        "text": example.text,
        "options": ", ".join(options),
        "options_or": ", ".join(options[:-1]) + " or " + options[-1],
        "options_lines": "\n".join(f"- {o}" for o in options),
    }
    prompt = template.prompt.format(**fields)
    answer = template.answer.format(label=example.label)
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


# ── Self-Instruct: the model writes new tasks ────────────────────────────────────────────

GenerateFn = Callable[[str], str]
SEED_FILE = TEMPLATE_DIR / "seed_tasks.json"
NO_INPUT = "<noinput>"
PROMPT_HEAD = (
    "Come up with a series of diverse tasks. Each task has an instruction, an optional "
    "input and the correct output.\n\n"
)
# Tasks a text-only model cannot do, or that ask for something outside the text.
UNSUITABLE = re.compile(
    r"\b(images?|pictures?|photos?|graphs?|charts?|diagrams?|flowcharts?|files?|maps?|draw|"
    r"drawing|plot|video|audio|music|sound|url|website|go to)\b",
    re.IGNORECASE,
)
TASK_SPLIT = re.compile(r"\n\s*Task \d+\s*\n")
TASK_FIELDS = re.compile(r"^\s*Instruction:(.*?)\n\s*Input:(.*?)\n\s*Output:(.*)$", re.DOTALL)


@dataclass
class SelfInstructConfig:
    n: int = 50  # new tasks wanted
    k: int = 6  # tasks shown in each prompt
    k_machine: int = 2  # of which at most this many are machine-written (Wang et al.: 2 of 8)
    rouge_threshold: float = 0.7  # a task joins only if its ROUGE-L with every pool task is lower
    min_words: int = 3  # fewest words in an instruction
    max_words: int = 150  # most words in an instruction
    max_output_chars: int = 2000  # longest output
    max_prompts: int = 0  # give up after this many prompts (0 = 20 × n)
    seed: int = 0  # seeds the choice of tasks shown


@dataclass
class SelfInstructResult:
    records: list[Conversation]  # the accepted new tasks, with provenance in meta
    rejected: Counter[str] = field(default_factory=Counter)  # filter name → candidates
    prompts: int = 0  # prompts sent to generate_fn


def load_seed_tasks(path: str | Path | None = None) -> list[dict[str, str]]:
    """Seed tasks: a JSON list of {id, instruction, input, output} (input may be "")."""
    path = Path(path) if path is not None else SEED_FILE
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read seed tasks ({e})") from None
    if not isinstance(tasks, list) or not tasks:
        raise DataError(f"{path}: must hold a non-empty JSON list of seed tasks")
    for i, t in enumerate(tasks):
        for key in ("instruction", "output"):
            if not isinstance(t, dict) or not isinstance(t.get(key), str) or not t[key].strip():
                raise DataError(f"{path}: task [{i}].{key} must be a non-empty string")
    return [
        {**t, "id": str(t.get("id", f"seed-{i}")), "input": t.get("input") or ""}
        for i, t in enumerate(tasks)
    ]


def self_instruct_prompt(tasks: Sequence[dict[str, str]]) -> str:
    """k numbered example tasks, then the header of the next one for the model to fill in."""
    blocks = [
        f"Task {i}\nInstruction: {t['instruction']}\nInput: {t['input'] or NO_INPUT}\n"
        f"Output: {t['output']}\n"
        for i, t in enumerate(tasks, start=1)
    ]
    return PROMPT_HEAD + "\n".join(blocks) + f"\nTask {len(tasks) + 1}\nInstruction:"


def parse_tasks(continuation: str) -> list[dict[str, str] | None]:
    """The tasks a model wrote after `self_instruct_prompt` (None for a block that does not
    parse as Instruction / Input / Output)."""
    out: list[dict[str, str] | None] = []
    for block in TASK_SPLIT.split("Instruction:" + continuation):
        match = TASK_FIELDS.match(block)
        if match is None:
            out.append(None)
            continue
        instruction, input_, output = (part.strip() for part in match.groups())
        input_ = "" if input_ == NO_INPUT else input_
        out.append({"instruction": instruction, "input": input_, "output": output})
    return out


def _format_problem(task: dict[str, str], config: SelfInstructConfig) -> str | None:
    instruction, output = task["instruction"], task["output"]
    if not instruction or not output:
        return "empty"
    if not instruction[0].isalpha():
        return "format"  # stray punctuation, numbering or code: not an instruction
    if UNSUITABLE.search(instruction) or "Instruction:" in output:
        return "format"
    if output in (instruction, task["input"]):
        return "format"  # the output only copies the prompt
    return None


def _length_problem(task: dict[str, str], config: SelfInstructConfig) -> str | None:
    words = len(task["instruction"].split())
    ok = config.min_words <= words <= config.max_words
    return None if ok and len(task["output"]) <= config.max_output_chars else "length"


FILTERS: Registry[Callable[[dict[str, str], SelfInstructConfig], str | None]] = Registry(
    "self-instruct filter"
)
FILTERS.add("format", _format_problem)
FILTERS.add("length", _length_problem)


def _sample_prompt_tasks(
    pool: list[dict[str, str]], n_seeds: int, config: SelfInstructConfig, rng: random.Random
) -> list[dict[str, str]]:
    machine = pool[n_seeds:]
    shown = rng.sample(machine, min(config.k_machine, len(machine)))
    shown += rng.sample(pool[:n_seeds], min(config.k - len(shown), n_seeds))
    rng.shuffle(shown)
    return shown


def self_instruct(
    generate_fn: GenerateFn,
    seeds: Sequence[dict[str, str]],
    config: SelfInstructConfig,
    progress: bool = False,
) -> SelfInstructResult:
    """Grow `config.n` new tasks from `seeds` with `generate_fn` (see the module docstring)."""
    from tqdm import tqdm

    bar = tqdm(total=config.n, desc="self-instruct", unit="task", disable=not progress)
    pool = [dict(s) for s in seeds]
    rng = random.Random(config.seed)
    result = SelfInstructResult([])
    budget = config.max_prompts or 20 * config.n
    while len(result.records) < config.n and result.prompts < budget:
        shown = _sample_prompt_tasks(pool, len(seeds), config, rng)
        result.prompts += 1
        for task in parse_tasks(generate_fn(self_instruct_prompt(shown))):
            if len(result.records) == config.n:
                break
            problem, rouge_max = _judge(task, pool, config)
            if problem is not None:
                result.rejected[problem] += 1
                continue
            task["id"] = f"si-{len(result.records) + 1:05d}"
            pool.append(task)
            meta = {
                "source": "self-instruct",
                "id": task["id"],
                "round": result.prompts,
                "prompt_ids": [t["id"] for t in shown],
                "rouge_max": round(rouge_max, 4),
            }
            result.records.append(
                from_alpaca(task["instruction"], task["output"], task["input"], meta=meta)
            )
            bar.update(1)
    bar.close()
    return result


def _judge(
    task: dict[str, str] | None, pool: Sequence[dict[str, str]], config: SelfInstructConfig
) -> tuple[str | None, float]:
    """(the first filter the task fails, or None; its highest ROUGE-L with a pool task)."""
    if task is None:
        return "parse", 0.0
    problem = next((p for name in FILTERS if (p := FILTERS.get(name)(task, config))), None)
    if problem is not None:
        return problem, 0.0
    rouge_max = max(rouge_l(task["instruction"], p["instruction"]) for p in pool)
    return ("rouge" if rouge_max >= config.rouge_threshold else None), rouge_max


def model_generate_fn(
    model: str,
    max_new_tokens: int = 384,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
) -> GenerateFn:
    """`generate_fn` backed by a real model (embedded name or directory); each call samples
    with the next seed, so a run is reproducible."""
    from lmforge.hub import load_model, load_tokenizer
    from lmforge.model.generate import SamplingConfig, generate

    lm, tokenizer = load_model(model).eval(), load_tokenizer(model)
    calls = itertools.count(seed)

    def generate_fn(prompt: str) -> str:
        config = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=next(calls)
        )
        ids = tokenizer.encode(prompt)
        kwargs: dict[str, Any] = dict(eos_token_id=tokenizer.eos_id, decode=tokenizer.decode)
        return generate(lm, [ids], config, truncate=True, **kwargs)[0].text or ""

    return generate_fn
