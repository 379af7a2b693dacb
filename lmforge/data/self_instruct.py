"""Self-Instruct (Wang et al., 2022): a model grows a pool of tasks from a few seeds.

The model is shown k tasks from the pool and writes more; a new task joins the pool only if
it passes the filters, so the pool stays diverse:

    seeds ──► pool ──sample k──► prompt ──generate_fn──► parse ──► filters ──► pool + record
               ▲                                                     │
               └─────────────────────────────────────────────────────┘
    filters: format (non-empty parts, no images/files/..., starts with a letter),
             length (instruction words, output chars), ROUGE-L < 0.7 with every pool task

`generate_fn(prompt) -> str` is injected: tests pass a scripted one, `lmforge data build
self-instruct` a real model's (lmforge/recipes/data.py).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lmforge.data.instruct import Conversation, from_alpaca
from lmforge.errors import DataError
from lmforge.registry import Registry
from lmforge.text_metrics import rouge_l

TEMPLATE_DIR = Path(__file__).parent / "templates"

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
