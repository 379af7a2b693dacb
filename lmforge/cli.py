"""`lmforge VERB ...`: one table from verb to command; every flag comes from a config dataclass.

A command is a config dataclass and the recipe that runs it; its flags are the dataclass's
leaf fields (lmforge/flags.py):

    lmforge pretrain --config configs/pretrain-tiny.yaml --train.lr=3e-4 --model.n_layer 6
                     └─ fields from a YAML file ───────┘ └─ then one flag per field ──────┘

A verb's recipe is imported only when the verb runs, so `lmforge --help` starts without
torch. An error a user can cause exits with code 2 and its fix spelt as this verb's flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import load
from lmforge.errors import LmforgeError, RunInterrupted
from lmforge.flags import (
    Parser,
    add_config_flags,
    bools_alone,
    config_overrides,
    find_command,
    listed,
    split_open,
    unknown_flag,
)
from lmforge.registry import Registry


@dataclass(frozen=True)
class Command:
    """A leaf of the command tree: its config dataclass and the recipe that runs it."""

    help: str  # one line in its parent's list of commands ("" for a verb)
    config: type | None  # the dataclass whose leaf fields are the flags (None: no flags)
    run: Callable[[Any], Any]  # the recipe, called with the loaded config; an int is the exit code
    load: Callable[[str | None, list[str]], Any] | None = None  # (YAML, overrides) → config
    fixed: dict[str, str] = field(default_factory=dict)  # fields this command sets (no flags)
    extra: dict[str, str] = field(default_factory=dict)  # flags that are not fields: name → help


@dataclass(frozen=True)
class Group:
    """A verb or an action with sub-commands (`lmforge data stats|build|import`)."""

    help: str  # one line in its parent's list of commands ("" for a verb)
    children: dict[str, Command | Group]
    epilog: str = ""  # more --help text, e.g. the registered names
    metavar: str = "ACTION"  # what a sub-command is called in --help


@dataclass(frozen=True)
class Verb:
    help: str  # one line for `lmforge --help`
    tree: Callable[[], Command | Group]  # imports the recipe only when the verb is used


VERBS: Registry[Verb] = Registry("verb")


# ── the parser ──────────────────────────────────────────────────────────────────────────────


def _add_tree(parser: Parser, node: Command | Group, path: list[str]) -> None:
    if isinstance(node, Group):
        parser.epilog = node.epilog or None
        sub = parser.add_subparsers(dest=f"_action{len(path)}", metavar=node.metavar, required=True)
        for name, child in node.children.items():
            parser.children[name] = sub.add_parser(name, help=child.help, description=child.help)
            _add_tree(parser.children[name], child, [*path, name])
        return
    if node.config is not None:
        add_config_flags(parser, node.config, node.extra, node.fixed)
    parser.set_defaults(_command=node, _path=" ".join(path))


def build_parser(verbs: Iterable[str] | None = None) -> Parser:
    """The whole command line; only `verbs` (default: all) get their flags, so a run imports
    only its own recipe."""
    parser = Parser(
        prog="lmforge", description="lmforge: pretrain, adapt, prompt, augment and serve LMs."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    wanted = set(VERBS.names() if verbs is None else verbs)
    for name in VERBS:
        verb = VERBS.get(name)
        parser.children[name] = sub.add_parser(name, help=verb.help, description=verb.help)
        if name in wanted:
            _add_tree(parser.children[name], verb.tree(), [name])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[:1] if argv and argv[0] in VERBS else [])
    leaf, named = find_command(parser, argv)
    args, unknown = parser.parse_known_args(argv[:named] + bools_alone(leaf, argv[named:]))
    unknown = split_open(args, unknown)
    path = args._path
    if unknown:
        print(f"lmforge {path}: error: {unknown_flag(leaf, unknown, path)}", file=sys.stderr)
        return 2
    command: Command = args._command
    try:
        config = _load(command, args)
        if getattr(config, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
            # the same command in N ranks under torchrun, which sets WORLD_SIZE in each
            from lmforge.train.launch import launch, without_flag

            return launch(without_flag(argv, "--nproc"), config.nproc)
        code = command.run(config)
        return code if isinstance(code, int) else 0
    except RunInterrupted as e:  # a checkpoint was saved; the same command resumes
        print(f"lmforge {path}: {e}", file=sys.stderr)
        return e.exit_code
    except LmforgeError as e:
        print(f"lmforge {path}: error: {e.render(leaf.spell)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {path}: interrupted", file=sys.stderr)
        return 130


def _load(command: Command, args: argparse.Namespace) -> Any:
    """The command's config: defaults ← --config YAML ← fixed fields ← flags."""
    if command.config is None:
        return None
    overrides = [f"{k}={v}" for k, v in command.fixed.items()] + config_overrides(args)
    if command.load is not None:
        return command.load(args.config, overrides)
    return load(command.config, args.config, overrides)


# ── the verbs ───────────────────────────────────────────────────────────────────────────────


def verb(name: str, help: str) -> Callable[[Callable[[], Command | Group]], Callable]:
    def register(tree: Callable[[], Command | Group]) -> Callable[[], Command | Group]:
        VERBS.add(name, Verb(help, tree))
        return tree

    return register


def _actions(actions: Registry) -> Group:
    """A verb whose sub-commands are the Action entries of its recipe's ACTIONS registry."""
    children = {name: actions.get(name) for name in actions}
    return Group(
        "", {n: Command(a.help, a.config, a.run, fixed=a.fixed) for n, a in children.items()}
    )


@verb("pretrain", "train a native language model from scratch on a corpus")
def _pretrain() -> Command:
    from lmforge.model.config import PRESETS
    from lmforge.recipes.pretrain import PretrainConfig, load_config, pretrain

    def run(cfg: PretrainConfig) -> None:
        result, model_dir = pretrain(cfg)
        print(
            f"validation loss {result.val_loss:.4f} (perplexity {result.val_ppl:.2f}); "
            f"model saved to {model_dir}"
        )

    preset = "model shape preset" + listed(PRESETS.names)
    return Command("", PretrainConfig, run, load=load_config, extra={"model.preset": preset})


@verb("finetune", "adapt a model with a delta method (lora, adapter, ...) or all weights")
def _finetune() -> Command:
    from lmforge.recipes.finetune import FinetuneConfig, finetune

    def run(cfg: FinetuneConfig) -> None:
        results = finetune(cfg)
        wanted = ("test_accuracy", "val_loss")  # val_loss is None without held-out data
        shown = {k: v for k, v in results.items() if k in wanted and v is not None}
        text = ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
        print(f"results: {text or 'no metric'} ({cfg.run_dir}/results.json)")

    return Command("", FinetuneConfig, run)


@verb("eval", "score a model on a task (few-shot, calibrated, chain-of-thought) or its perplexity")
def _eval() -> Command:
    from lmforge.recipes.eval import EvalConfig, run_eval, task_listing

    def run(cfg: EvalConfig) -> None:
        if cfg.task == "list":
            print(task_listing())
            return
        result = run_eval(cfg)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"{result.task}: {shown} (n={result.n}); results written to {cfg.out}")

    return Command("", EvalConfig, run)


@verb("generate", "continue a prompt with a trained model")
def _generate() -> Command:
    from lmforge.recipes.generate import GenerateConfig, run_generate

    return Command("", GenerateConfig, run_generate)


@verb("chat", "talk with a chat model (/reset forgets, /exit quits)")
def _chat() -> Command:
    from lmforge.recipes.chat import ChatConfig, run_chat

    return Command("", ChatConfig, run_chat)


@verb("agent", "answer with tools (calculator, python, read_file, search) step by step (ReAct)")
def _agent() -> Command:
    from lmforge.recipes.agent import AgentConfig, run_agent

    def run(cfg: AgentConfig) -> None:
        log = run_agent(cfg)
        done = log.stop_reason == "answer"
        print(f"answer: {log.answer}" if done else f"no answer ({log.stop_reason})")

    return Command("", AgentConfig, run)


@verb("tokenizer", "tokenizer tools: `lmforge tokenizer train ...`")
def _tokenizer() -> Group:
    from lmforge.recipes.tokenizer import TokenizerTrainConfig, train_tokenizer

    help = "train a byte-level BPE tokenizer on text"
    return Group("", {"train": Command(help, TokenizerTrainConfig, train_tokenizer)})


@verb("data", "instruction data: `lmforge data stats|build|import ...`")
def _data() -> Group:
    from lmforge.data.instruct import FORMATS
    from lmforge.recipes.data import ImportConfig, StatsConfig, builders, data_import, data_stats

    built = {n: Command(b.help, b.config, b.run, fixed=b.fixed) for n, b in builders().items()}
    names = f"formats: {', '.join(FORMATS.names())}; builders: {', '.join(built)}"
    stats = Command("count records, turns and chars/tokens per role", StatsConfig, data_stats)
    imports = Command("validate, deduplicate and convert files", ImportConfig, data_import)
    build = Group("build instruction data (FLAN templates, self-instruct)", built, names, "BUILDER")
    return Group("", {"stats": stats, "build": build, "import": imports}, names)


@verb("rag", "retrieval-augmented generation: `lmforge rag index|ask|eval|qa-set ...`")
def _rag() -> Group:
    from lmforge.recipes.rag import ACTIONS

    return _actions(ACTIONS)


@verb("align", "align a model: `lmforge align reward|dpo|ppo|grpo|build-preferences ...`")
def _align() -> Group:
    from lmforge.recipes.align import ACTIONS

    return _actions(ACTIONS)


@verb("scaling", "predictable scaling: `lmforge scaling run|fit|predict ...`")
def _scaling() -> Group:
    from lmforge.recipes.scaling import ACTIONS

    actions = {name: ACTIONS.get(name) for name in ACTIONS}
    return Group("", {n: Command(a.help, a.config, a.run) for n, a in actions.items()})


@verb("export", "write a model or delta for transformers/vLLM, peft or llama.cpp/Ollama (gguf)")
def _export() -> Command:
    from lmforge.recipes.export import ExportConfig, run_export

    return Command("", ExportConfig, run_export)


@verb("serve", "an OpenAI-compatible HTTP server (chat, completions, embeddings, adapters)")
def _serve() -> Command:
    from lmforge.recipes.serve import ServeConfig, run_serve

    return Command("", ServeConfig, run_serve)


@verb("assets", "list the embedded models and corpora and whether they verify")
def _assets() -> Command:
    from lmforge.assets import ASSETS

    def run(cfg: None) -> int:
        missing = 0
        for name in ASSETS:
            asset = ASSETS.get(name)
            ok, where = asset.verify()
            missing += not ok and not asset.package.startswith("apt:")
            print(f"{'ok     ' if ok else 'MISSING'}  {name:24} {asset.kind:8} {asset.description}")
            print(f"         {where if ok else 'install: ' + asset.install_command}")
        return 1 if missing else 0

    return Command("", None, run)


@verb("quickstart", "train a small model on Shakespeare in minutes and write a report")
def _quickstart() -> Command:
    from lmforge.recipes.quickstart import QuickstartConfig, quickstart

    return Command("", QuickstartConfig, quickstart)


@verb("moefy", "split a dense model's FFNs into routed experts (MoEfication)")
def _moefy() -> Command:
    from lmforge.recipes.moefy import MoefyConfig, run_moefy

    def run(cfg: MoefyConfig) -> None:
        report = run_moefy(cfg)
        shown = ""
        if "ppl" in report:
            ppl = report["ppl"]
            shown = f"; perplexity {ppl['dense']:.2f} dense → {ppl['moefied']:.2f} MoEfied"
        print(f"{cfg.top_k} of {cfg.experts} experts per token{shown}; model saved to {cfg.out}")

    return Command("", MoefyConfig, run)


@verb("lab", "built-in experiments that reproduce the handbook's claims")
def _lab() -> Command:
    from lmforge.lab import LabConfig, run_lab

    return Command("", LabConfig, run_lab)
