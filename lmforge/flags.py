"""Config dataclasses as command-line flags (argparse), for `lmforge VERB`.

Every leaf field of a config dataclass is a flag named by its dotted path; the parser
remembers them, to suggest the closest flags for a misspelt one and to spell an error's fix
(`{skip_bad=true}`, lmforge.errors) as this command's flag:

    field         flag                        typed as
    train.lr      --train.lr FLOAT            --train.lr=3e-4, --train.lr 3e-4
    skip_bad      --skip_bad BOOL             --skip_bad, --skip-bad, --skip_bad=false
    stop          --stop STR (repeatable)     --stop '\n\n' --stop 'Q:'
    files         FILES (positional)          lmforge data stats a.jsonl b.csv
    delta         --delta.KEY VALUE           --delta.r=8 (a free-form mapping)

`-` and `_` are alike in names; the values go to lmforge.config as `field=value` overrides,
which reads them for the field's type.
"""

from __future__ import annotations

import argparse
import difflib
import textwrap
import typing
from collections.abc import Callable, Iterable
from typing import Any

from lmforge.config import Leaf, leaf_fields
from lmforge.errors import python_spelling

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off"}


class _Formatter(argparse.HelpFormatter):
    """Wraps help at spaces only, so a registered name (peoples-daily-pos) is never cut at
    a hyphen into something that cannot be typed."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """An argparse parser that knows its config flags: to suggest them and to spell fixes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a misspelt flag is suggested, never guessed
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.flags: dict[str, str] = {}  # field → its flag as --help shows it
        self.spellings: dict[str, str] = {}  # every accepted spelling → field
        self.bools: set[str] = set()  # spellings of bool flags
        self.children: dict[str, Parser] = {}  # sub-command → its parser
        self.fields: Any = self  # where field flags are listed (an argument group)

    def spell(self, name: str, value: str | None) -> str:
        """Setting `name` (= value) as typed for this command: `--data.skip_bad`. A component
        names `skip_bad`, which here may be `data.skip_bad`; `a|b` tries each name."""
        flag = None
        for each in name.split("|"):
            ends = [f for n, f in self.flags.items() if n.endswith("." + each)]
            flag = self.flags.get(each) or (ends[0] if len(ends) == 1 else None)
            if flag is not None:
                break
        if flag is None:
            return python_spelling(name, value)
        if value is None or (value == "true" and flag in self.bools):
            return flag
        return f"{flag}={value}"

    def add_flag(
        self, name: str, spellings: list[str], boolean: bool = False, **kwargs: Any
    ) -> None:
        """One flag of field `name`; each `_` spelling is also accepted with `-`, unlisted."""
        self.flags[name] = spellings[0]
        self.fields.add_argument(*spellings, dest=f"cfg:{name}", **kwargs)
        dashed = ["--" + s[2:].replace("_", "-") for s in spellings]
        hidden = [s for s in dict.fromkeys(dashed) if s not in spellings]
        if hidden:
            hide = {**kwargs, "help": argparse.SUPPRESS}
            self.fields.add_argument(*hidden, dest=f"cfg:{name}", **hide)
        for s in spellings + hidden:
            self.spellings[s] = name
        if boolean:
            self.bools.update(spellings + hidden)


def _metavar(tp: Any) -> str:
    """BOOL, INT, STR, ...: the type of one value (a list's item, an optional's value)."""
    if tp is bool:
        return "BOOL"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and (typing.get_origin(tp) is list or len(args) == 1):
        tp = args[0]
    return tp.__name__.upper() if isinstance(tp, type) else "VALUE"


def listed(choices: Callable[[], Iterable[str]] | None) -> str:
    return f" (registered: {', '.join(choices())})" if choices else ""


def add_config_flags(
    parser: Parser, cls: type, extra: dict[str, str] | None = None, fixed: Iterable[str] = ()
) -> None:
    """`--config` plus a flag for every leaf field of `cls` (see the module docstring)."""
    parser.add_argument("--config", help="YAML file of fields (see configs/); flags override it")
    parser.spellings["--config"] = "config"
    parser.fields = parser.add_argument_group("config fields (override the YAML file)")
    for name, help_text in (extra or {}).items():
        parser.add_flag(name, [f"--{name}"], metavar="VALUE", help=help_text)
    open_groups = []
    for leaf in leaf_fields(cls):
        if leaf.name in fixed or leaf.name in (extra or {}):
            continue
        help_text = leaf.doc + listed(leaf.meta.get("choices"))
        if typing.get_origin(leaf.type) is dict:  # a free-form group: any --name.key=value
            open_groups.append(leaf.name)
            parser.fields.add_argument(
                f"--{leaf.name}.KEY", dest=f"open:{leaf.name}", metavar="VALUE", help=help_text
            )
        else:
            _add_leaf(parser, leaf, help_text)
    parser.set_defaults(_open_groups=open_groups)


def _add_leaf(parser: Parser, leaf: Leaf, help_text: str) -> None:
    many = typing.get_origin(leaf.type) is list
    options = list(leaf.meta.get("aliases", ()))
    if leaf.meta.get("positional"):
        nargs = "+" if many else (None if leaf.required else "?")
        name = leaf.name.rsplit(".", 1)[-1].upper()
        parser.add_argument(f"pos:{leaf.name}", metavar=name, nargs=nargs, help=help_text)
        if not options:
            return
        help_text = argparse.SUPPRESS  # the positional's help says it
    else:
        options.insert(0, f"--{leaf.name}")
        if leaf.type is bool:
            help_text += " (the flag alone: true)"
        if many:
            help_text += " (repeat the flag for more)"
    parser.add_flag(
        leaf.name,
        options,
        boolean=leaf.type is bool,
        metavar=_metavar(leaf.type),
        help=help_text,
        action="append" if many else "store",
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    """`field=value` strings from the parsed positionals and flags (a repeated flag's values
    in the order typed)."""
    out = []
    for key, value in vars(args).items():
        kind, _, name = key.partition(":")
        if kind in ("cfg", "pos") and value is not None:
            out += [f"{name}={v}" for v in (value if isinstance(value, list) else [value])]
    return out + getattr(args, "_open_overrides", [])


def split_open(args: argparse.Namespace, unknown: list[str]) -> list[str]:
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


def find_command(parser: Parser, argv: list[str]) -> tuple[Parser, int]:
    """The parser of the command `argv` names, and how many words name it."""
    i = 0
    while i < len(argv) and argv[i] in parser.children:
        parser, i = parser.children[argv[i]], i + 1
    return parser, i


def bools_alone(parser: Parser, words: list[str]) -> list[str]:
    """A bool flag not followed by true/false means true: `--truncate` → `--truncate=true`."""
    out = []
    for i, word in enumerate(words):
        following = words[i + 1].lower() if i + 1 < len(words) else ""
        out.append(f"{word}=true" if word in parser.bools and following not in BOOL_WORDS else word)
    return out


def closest_flags(parser: Parser, typed: str) -> list[str]:
    """The flags a misspelt one most likely meant, best first, one per field: those that end
    in the same field name (`--lr` → `--train.lr`), then the spellings nearest by difflib
    (ratio ≥ 0.6 and within 0.05 of the best)."""
    last = typed.lstrip("-").replace("-", "_").rsplit(".", 1)[-1]
    same_name = [f for n, f in parser.flags.items() if n.rsplit(".", 1)[-1] == last]
    scores = {s: difflib.SequenceMatcher(None, typed, s).ratio() for s in parser.spellings}
    best = max(scores.values(), default=0.0)
    near = [
        s for s in sorted(scores, key=lambda s: -scores[s]) if scores[s] >= max(0.6, best - 0.05)
    ]
    out, seen = [], set()
    for spelling in same_name + near:
        if parser.spellings[spelling] not in seen:
            seen.add(parser.spellings[spelling])
            out.append(spelling)
    return out[:3]


def unknown_flag(parser: Parser, words: list[str], path: str) -> str:
    """`unknown flag --train.lrr; did you mean --train.lr?`, in the user's own spelling."""
    see = f"`lmforge {path} --help` lists them"
    flags = [w for w in words if w.startswith("-")]
    if not flags:
        return f"unexpected argument {words[0]!r}; {see}"
    typed, eq, value = flags[0].partition("=")
    close = [spelling + eq + value for spelling in closest_flags(parser, typed)]
    if not close:
        return f"unknown flag {typed}; {see}"
    return f"unknown flag {typed}; did you mean {' or '.join(close)}? ({see})"
