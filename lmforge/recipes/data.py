"""`lmforge data`: look at, build and import instruction data; one config per action.

    lmforge data stats FILE... [--tokenizer NAME] [--format F] [--skip_bad] [--json]
    lmforge data build bbc-news --out FILE [--split train] [--phrasings seen] [--max N]
    lmforge data build flan --templates TASK.yaml --out FILE [...]
    lmforge data build self-instruct --model NAME --seeds FILE --out FILE --n N
    lmforge data import FILE... --out FILE [--skip_bad] [--format F] [--keep_duplicates]

Every file written is JSONL (or .json/.csv/.parquet by suffix) in OpenAI messages form,
each record with its provenance in `meta`.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.config import arg
from lmforge.data.flan import FLAN_TASKS, FlanConfig, build_flan
from lmforge.data.instruct import (
    FORMATS,
    Conversation,
    InstructionSet,
    Skipped,
    format_stats,
    read_instructions,
    stats,
    write_instructions,
)
from lmforge.data.self_instruct import (
    GenerateFn,
    SelfInstructConfig,
    SelfInstructResult,
    load_seed_tasks,
    self_instruct,
)
from lmforge.errors import ConfigError
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig, generate
from lmforge.recipes.action import Action
from lmforge.registry import Registry


def _need_out(out: str, inputs: Iterable[str | None] = ()) -> None:
    """An output file is given, and it is none of the inputs (a hard link of one counts)."""
    if not out:
        fix = "pass {out=FILE} (.jsonl, .json, .csv or .parquet)"
        raise ConfigError("no output file given", fix=fix)
    target = Path(out)
    for source in filter(None, inputs):
        if target.exists() and Path(source).exists() and Path(source).samefile(target):
            raise ConfigError(
                f"{out} is also an input ({source}); writing it would replace what is read",
                fix="write to another {out}",
            )


# ── stats and import ────────────────────────────────────────────────────────────────────────


@dataclass
class ReadConfig:
    format: str | None = arg(None, choices=FORMATS.names)  # one format for all (default: detect)
    skip_bad: bool = False  # skip malformed records (counted) instead of stopping at the first


@dataclass
class StatsConfig(ReadConfig):
    files: list[str] = arg(factory=list, positional=True)  # instruction files
    tokenizer: str | None = None  # count tokens too: a model name or directory
    json: bool = False  # print the figures as JSON


@dataclass
class ImportConfig(ReadConfig):
    files: list[str] = arg(factory=list, positional=True)  # alpaca/sharegpt/openai files
    out: str = ""  # file to write (.jsonl, .json, .csv, .parquet)
    keep_duplicates: bool = False  # keep exact duplicates instead of dropping them

    def validate(self) -> None:
        _need_out(self.out, self.files)


def data_stats(cfg: StatsConfig) -> dict[str, Any]:
    """Print counts of records, turns and chars (tokens) per role; return them."""
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    data = read_instructions(cfg.files, format=cfg.format, skip_bad=cfg.skip_bad)
    figures = stats(data, tokenizer)
    print(json.dumps(figures, indent=2) if cfg.json else format_stats(figures))
    return figures


def data_import(cfg: ImportConfig) -> InstructionSet:
    """Validate, deduplicate and convert people's files into one file; return what was read."""
    data = read_instructions(
        cfg.files, format=cfg.format, skip_bad=cfg.skip_bad, dedup=not cfg.keep_duplicates
    )
    _write(data.records, cfg.out)
    formats = ", ".join(f"{k} {v}" for k, v in sorted(data.formats.items()))
    print(f"formats: {formats}; skipped {len(data.skipped)} bad, dropped {data.duplicates} dup")
    if data.skipped:
        rejected = write_rejected(data.skipped, cfg.out)
        print(f"  the {len(data.skipped):,} skipped records, with why: {rejected}")
        for s in data.skipped[:10]:
            print(f"  skipped {s.origin}: {s.reason}")
    return data


def write_rejected(skipped: list[Skipped], out: str | Path) -> Path:
    """OUT.rejected.jsonl beside `out`: one line per skipped record (origin, reason, record)."""
    path = Path(out).with_name(Path(out).stem + ".rejected.jsonl")
    lines = [
        json.dumps({"origin": s.origin, "reason": s.reason, "record": s.record}, ensure_ascii=False)
        for s in skipped
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _write(records: list[Conversation], out: str) -> None:
    write_instructions(records, out)
    print(f"wrote {len(records):,} records to {out}")


# ── builders ────────────────────────────────────────────────────────────────────────────────


BUILDERS: Registry[Action] = Registry("data builder")


@dataclass
class FlanBuildConfig(FlanConfig):
    out: str = ""  # file to write (.jsonl, .json, .csv, .parquet)

    def validate(self) -> None:
        _need_out(self.out, [self.task])


def data_build_flan(cfg: FlanBuildConfig) -> list[Conversation]:
    records = build_flan(cfg)
    _write(records, cfg.out)
    templates = Counter(r.meta["template_id"] for r in records)
    print("templates: " + ", ".join(f"{k} {v}" for k, v in sorted(templates.items())))
    return records


@dataclass
class SelfInstructBuildConfig(SelfInstructConfig):
    model: str = "smollm2-135m-instruct"  # the model that writes new tasks
    seeds: str | None = None  # JSON file of seed tasks (default: the built-in 12)
    out: str = ""  # file to write (.jsonl, .json, .csv, .parquet)
    temperature: float = 0.7  # sampling temperature of the model
    max_new_tokens: int = 384  # tokens the model writes per prompt

    def validate(self) -> None:
        _need_out(self.out, [self.seeds])


def model_generate_fn(
    model: str,
    max_new_tokens: int = 384,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
) -> GenerateFn:
    """`generate_fn` backed by a real model (embedded name or directory); each call samples
    with the next seed, so a run is reproducible."""
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


def data_build_self_instruct(
    cfg: SelfInstructBuildConfig, generate_fn: GenerateFn | None = None
) -> SelfInstructResult:
    """Self-Instruct with `cfg.model` (or the `generate_fn` given) and write the new tasks."""
    fn = generate_fn or model_generate_fn(
        cfg.model, cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed
    )
    result = self_instruct(fn, load_seed_tasks(cfg.seeds), cfg, progress=True)
    _write(result.records, cfg.out)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(result.rejected.items())) or "none"
    print(f"{result.prompts} prompts; rejected: {rejected}")
    return result


BUILDERS.add(
    "flan", Action("FLAN-style templates from a YAML file", FlanBuildConfig, data_build_flan)
)
BUILDERS.add(
    "self-instruct",
    Action("the model writes new tasks", SelfInstructBuildConfig, data_build_self_instruct),
)


def builders() -> dict[str, Action]:
    """Every builder: the registered ones and the FLAN templates of each built-in task."""
    flan = BUILDERS.get("flan")
    out = {
        name: Action(f"FLAN-style templates over {name}", flan.config, flan.run, {"task": name})
        for name in FLAN_TASKS
    }
    return {**out, **{name: BUILDERS.get(name) for name in BUILDERS}}
