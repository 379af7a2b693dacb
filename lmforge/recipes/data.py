"""`lmforge data`: look at, build and import instruction data.

    lmforge data stats FILE... [--tokenizer NAME] [--format F] [--skip-bad]
    lmforge data build bbc-news --out FILE [--split train] [--phrasings seen|heldout|all]
                                [--max N] [--seed S]
    lmforge data build flan --templates TASK.yaml --out FILE [...]
    lmforge data build self-instruct --model NAME --seeds FILE --out FILE --n N
    lmforge data import FILE... --out FILE [--skip-bad] [--format F] [--keep-duplicates]

Every file written is JSONL (or .json/.csv/.parquet by suffix) in OpenAI messages form,
each record with its provenance in `meta`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable

from lmforge.registry import Registry

Action = Callable[[argparse.Namespace], None]
BUILDERS: Registry[Action] = Registry("data builder")


def _file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default=None, help="force a record format: alpaca|sharegpt|openai")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records, counted")


def _flan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="file to write (.jsonl, .json, .csv, .parquet)")
    p.add_argument("--split", default="train", help="train | validation | test")
    p.add_argument("--phrasings", default="seen", help="seen | heldout | all templates")
    p.add_argument("--max", type=int, default=0, help="at most N records (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-chars", type=int, default=None, help="cut input texts to N chars")


def _self_instruct_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="model that writes tasks")
    p.add_argument("--seeds", default=None, help="JSON seed tasks (default: the built-in 12)")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--n", type=int, default=50, help="new tasks wanted")
    p.add_argument("--k", type=int, default=6, help="tasks shown per prompt")
    p.add_argument("--max-prompts", type=int, default=0, help="give up after N (0 = 20 × n)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)


def add_data_args(p: argparse.ArgumentParser) -> None:
    from lmforge.data.build import TASKS

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("stats", help="count records, turns and chars/tokens per role")
    s.add_argument("files", nargs="+", help="instruction files")
    s.add_argument("--tokenizer", default=None, help="count tokens too (model name or path)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    _file_args(s)
    b = sub.add_parser("build", help="build instruction data (FLAN templates, self-instruct)")
    builders = b.add_subparsers(dest="builder", metavar="BUILDER", required=True)
    for name in TASKS:
        _flan_args(builders.add_parser(name, help=f"FLAN-style templates over {name}"))
    flan = builders.add_parser("flan", help="FLAN-style templates from a YAML file")
    flan.add_argument("--templates", required=True, help="task YAML (see data/templates/)")
    _flan_args(flan)
    _self_instruct_args(builders.add_parser("self-instruct", help="the model writes tasks"))
    i = sub.add_parser("import", help="validate, deduplicate and convert people's data")
    i.add_argument("files", nargs="+", help="alpaca/sharegpt/openai .json/.jsonl/.csv/.parquet")
    i.add_argument("--out", required=True, help="file to write")
    i.add_argument("--keep-duplicates", action="store_true", help="do not drop exact duplicates")
    _file_args(i)


def run_data(args: argparse.Namespace) -> None:
    {"stats": _stats, "build": _build, "import": _import}[args.action](args)


def _stats(args: argparse.Namespace) -> None:
    from lmforge.data.instruct import format_stats, read_instructions, stats

    tokenizer = None
    if args.tokenizer:
        from lmforge.hub import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    data = read_instructions(args.files, format=args.format, skip_bad=args.skip_bad)
    figures = stats(data, tokenizer)
    print(json.dumps(figures, indent=2) if args.json else format_stats(figures))


def _report(records: list, out: str) -> None:
    from lmforge.data.instruct import write_instructions

    write_instructions(records, out)
    print(f"wrote {len(records):,} records to {out}")


def _build(args: argparse.Namespace) -> None:
    BUILDERS.get(args.builder if args.builder in BUILDERS else "flan")(args)


@BUILDERS.register("flan")
def _build_flan(args: argparse.Namespace) -> None:
    from lmforge.data.build import FlanConfig, build_flan

    task = getattr(args, "templates", None) or args.builder
    config = FlanConfig(task, args.split, args.phrasings, args.max, args.seed, args.max_chars)
    records = build_flan(config)
    templates = Counter(r.meta["template_id"] for r in records)
    _report(records, args.out)
    print("templates: " + ", ".join(f"{k} {v}" for k, v in sorted(templates.items())))


@BUILDERS.register("self-instruct")
def _build_self_instruct(args: argparse.Namespace) -> None:
    from lmforge.data.build import (
        SelfInstructConfig,
        load_seed_tasks,
        model_generate_fn,
        self_instruct,
    )

    seeds = load_seed_tasks(args.seeds)
    config = SelfInstructConfig(n=args.n, k=args.k, max_prompts=args.max_prompts, seed=args.seed)
    generate_fn = model_generate_fn(args.model, temperature=args.temperature, seed=args.seed)
    result = self_instruct(generate_fn, seeds, config, progress=True)
    _report(result.records, args.out)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(result.rejected.items())) or "none"
    print(f"{result.prompts} prompts; rejected: {rejected}")


def _import(args: argparse.Namespace) -> None:
    from lmforge.data.instruct import read_instructions

    data = read_instructions(
        args.files, format=args.format, skip_bad=args.skip_bad, dedup=not args.keep_duplicates
    )
    _report(data.records, args.out)
    formats = ", ".join(f"{k} {v}" for k, v in sorted(data.formats.items()))
    print(f"formats: {formats}; skipped {len(data.skipped)} bad, dropped {data.duplicates} dup")
    for s in data.skipped[:10]:
        print(f"  skipped {s.origin}: {s.reason}")
