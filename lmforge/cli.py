"""`lmforge VERB ...`: one table from verb to function; each verb has its own --help.

Config-driven verbs take `--config FILE.yaml` plus one `--section.field=value`
flag per config field, generated from the config dataclasses.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.config import leaf_fields
from lmforge.errors import LmforgeError, RunInterrupted
from lmforge.registry import Registry


@dataclass(frozen=True)
class Verb:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


VERBS: Registry[Verb] = Registry("verb")


def verb(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]) -> Callable:
    def register(fn: Callable[[argparse.Namespace], int | None]) -> Callable:
        VERBS.add(name, Verb(help, arguments, fn))
        return fn

    return register


def add_config_flags(parser: argparse.ArgumentParser, cls: type, extra: dict[str, str]) -> None:
    """`--config` plus `--a.b` for every leaf field of `cls` (values parsed as YAML)."""
    parser.add_argument("--config", help="YAML file of fields (see configs/)")
    group = parser.add_argument_group("config fields (override the YAML file)")
    for name, help_text in extra.items():
        group.add_argument(f"--{name}", dest=f"cfg:{name}", metavar="VALUE", help=help_text)
    open_groups = []
    for name, tp, doc in leaf_fields(cls):
        if name in extra:
            continue
        if typing.get_origin(tp) is dict:  # a free-form group: any --name.key=value
            open_groups.append(name)
            group.add_argument(f"--{name}.KEY", dest=f"open:{name}", metavar="VALUE", help=doc)
            continue
        type_name = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        group.add_argument(f"--{name}", dest=f"cfg:{name}", metavar=type_name.upper(), help=doc)
    parser.set_defaults(_open_groups=open_groups)


def config_overrides(args: argparse.Namespace) -> list[str]:
    fixed = [
        f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("cfg:") and v is not None
    ]
    return fixed + getattr(args, "_open_overrides", [])


def _split_open(args: argparse.Namespace, unknown: list[str]) -> list[str]:
    """Take `--group.key=value` / `--group.key value` for free-form groups; return the rest."""
    groups = tuple(f"--{g}." for g in getattr(args, "_open_groups", []))
    taken, rest, i = [], [], 0
    while i < len(unknown):
        item = unknown[i]
        if groups and item.startswith(groups):
            if "=" not in item and i + 1 < len(unknown):
                item, i = f"{item}={unknown[i + 1]}", i + 1
            taken.append(item[2:])
        else:
            rest.append(item)
        i += 1
    args._open_overrides = taken
    return rest


# ── verbs ─────────────────────────────────────────────────────────────────────────────────────


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.pretrain import PretrainConfig

    add_config_flags(p, PretrainConfig, {"model.preset": "model shape preset (tiny, small, ...)"})


@verb("pretrain", "train a native language model from scratch on a corpus", _pretrain_args)
def _pretrain(args: argparse.Namespace) -> None:
    from lmforge.recipes.pretrain import load_config, pretrain

    result, model_dir = pretrain(load_config(args.config, config_overrides(args)))
    print(
        f"validation loss {result.val_loss:.4f} (perplexity {result.val_ppl:.2f}); "
        f"model saved to {model_dir}"
    )


def _finetune_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.finetune import FinetuneConfig

    add_config_flags(p, FinetuneConfig, {})


@verb(
    "finetune",
    "adapt a model with a delta method (lora, adapter, ...) or all weights",
    _finetune_args,
)
def _finetune(args: argparse.Namespace) -> None:
    from lmforge.recipes.finetune import finetune, load_config

    results = finetune(load_config(args.config, config_overrides(args)))
    shown = {k: v for k, v in results.items() if k in ("test_accuracy", "val_loss")}
    print("results: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def _eval_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.eval import EvalConfig

    add_config_flags(p, EvalConfig, {})


@verb(
    "eval",
    "score a model on a task (few-shot, calibrated, chain-of-thought) or its perplexity",
    _eval_args,
)
def _eval(args: argparse.Namespace) -> None:
    from lmforge.recipes.eval import load_config, run_eval, task_listing

    cfg = load_config(args.config, config_overrides(args))
    if cfg.task == "list":
        print(task_listing())
        return
    result = run_eval(cfg)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"{result.task}: {shown} (n={result.n}); results written to {cfg.out}")


def _generate_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.generate import add_sampling_args

    add_sampling_args(p)
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="keep the prompt's last tokens when it is longer than the context",
    )
    p.add_argument("--no-stream", action="store_true", help="print the text only at the end")


@verb("generate", "continue a prompt with a trained model", _generate_args)
def _generate(args: argparse.Namespace) -> None:
    from lmforge.recipes.generate import run_generate

    run_generate(args)


def _chat_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.generate import add_sampling_args

    add_sampling_args(p, temperature=0.7)
    p.add_argument("--system", default="", help="system prompt that opens the conversation")


@verb("chat", "talk with a chat model (/reset forgets, /exit quits)", _chat_args)
def _chat(args: argparse.Namespace) -> None:
    from lmforge.recipes.chat import run_chat

    run_chat(args)


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a byte-level BPE tokenizer on text")
    t.add_argument("inputs", nargs="+", help="corpus names, text files, folders or .jsonl files")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--out", default="tokenizer.json", help="where to write tokenizer.json")
    t.add_argument("--skip-bad", action="store_true", help="skip undecodable files / bad lines")


@verb("tokenizer", "tokenizer tools: `lmforge tokenizer train ...`", _tokenizer_args)
def _tokenizer(args: argparse.Namespace) -> None:
    from lmforge.data import load_corpus
    from lmforge.tokenizer import Tokenizer

    texts = [d.text for source in args.inputs for d in load_corpus(source, skip_bad=args.skip_bad)]
    tokenizer = Tokenizer.train(texts, vocab_size=args.vocab_size, show_progress=True)
    tokenizer.save(args.out)
    sample = texts[0][:200]
    ratio = len(sample.encode()) / max(1, len(tokenizer.encode(sample)))
    print(f"wrote {args.out}: {tokenizer.vocab_size} tokens, ~{ratio:.1f} bytes per token")


def _data_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.data import add_data_args

    add_data_args(p)


@verb("data", "instruction data: `lmforge data stats|build|import ...`", _data_args)
def _data(args: argparse.Namespace) -> None:
    from lmforge.recipes.data import run_data

    run_data(args)


def _align_args(p: argparse.ArgumentParser) -> None:
    from lmforge.recipes.align import AlignConfig

    add_config_flags(p, AlignConfig, {"method": "reward | dpo | ppo | grpo | build-preferences"})


@verb("align", "align a model: --method reward|dpo|ppo|grpo|build-preferences", _align_args)
def _align(args: argparse.Namespace) -> None:
    from lmforge.recipes.align import align, load_config

    cfg = load_config(args.config, config_overrides(args))
    results = align(cfg)
    if cfg.method == "build-preferences":
        print(f"{results['pairs']} pairs from {results['prompts']} prompts: {results['out']}")
        return
    held = results.get("held_out", {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in held.items() if isinstance(v, float))
    print(f"{cfg.method}: held out {shown or 'nothing'}; saved in {cfg.run_dir}")


@verb("assets", "list the embedded models and corpora and whether they verify", lambda p: None)
def _assets(args: argparse.Namespace) -> int:
    from lmforge.assets import ASSETS

    missing = 0
    for name in ASSETS:
        asset = ASSETS.get(name)
        ok, where = asset.verify()
        missing += not ok and not asset.package.startswith("apt:")
        print(f"{'ok     ' if ok else 'MISSING'}  {name:24} {asset.kind:8} {asset.description}")
        print(f"         {where if ok else 'install: ' + asset.install_command}")
    return 1 if missing else 0


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="run directory")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")


@verb(
    "quickstart",
    "train a small model on Shakespeare in minutes and write a report",
    _quickstart_args,
)
def _quickstart(args: argparse.Namespace) -> None:
    from lmforge.recipes.quickstart import quickstart

    quickstart(args.out, steps=args.steps)


def _lab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="`list`, or the experiment to run")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run")
    p.add_argument("--out", default=None, help="run directory (default runs/lab/NAME)")


@verb("lab", "built-in experiments that reproduce the handbook's claims", _lab_args)
def _lab(args: argparse.Namespace) -> None:
    from lmforge.lab import LABS, run_experiment

    if args.name == "list":
        for name in LABS:
            exp = LABS.get(name)
            print(f"{name:16} ~{exp.minutes:g} min  {exp.claim}")
        return
    print(f"report written to {run_experiment(args.name, args.out, args.quick)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="lmforge: pretrain, adapt, prompt, augment and serve LMs."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        v = VERBS.get(name)
        p = sub.add_parser(name, help=v.help, description=v.help)
        v.arguments(p)
        p.set_defaults(_run=v.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    unknown = _split_open(args, unknown)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args._run(args) or 0
    except RunInterrupted as e:  # a checkpoint was saved; the same command resumes
        print(f"lmforge {args.verb}: {e}", file=sys.stderr)
        return e.exit_code
    except LmforgeError as e:
        print(f"lmforge {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.verb}: interrupted", file=sys.stderr)
        return 130
