"""Configs are dataclasses, mirrored by YAML and overridable with dotted keys.

    cfg = load(PretrainConfig, "configs/pretrain-tiny.yaml", ["train.lr=3e-4"])

Every field is checked on the way in: an unknown field or a value of the wrong
type raises ConfigError naming the field (`train.lr`), the file it came from,
and the fields that are valid there.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, Union

import yaml

from lmforge.atomic import atomic_write_text
from lmforge.errors import ConfigError

C = TypeVar("C")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; convert where YAML is loose (1 → 1.0)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass `cls` from a mapping, checking every field."""
    fields = _fields(cls)
    hints = _hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"unknown field {key!r}; valid fields{' of ' + where if where else ''}: "
            + ", ".join(fields)
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{where + ': ' if where else ''}{e.message}", fix=e.fix) from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML-safe mapping of a dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def parse_value(text: str, tp: Any = None) -> Any:
    """A command-line value for a field of type `tp`.

    Text fields (`str`, `str | None`) take the text as typed, with the escapes `\\n`, `\\t`
    and `\\\\` decoded (an empty value is None for `str | None`); every other value is read
    as YAML: `3e-4` → 3e-4, `true` → True, `[a, b]` → list, `{r: 8}` → mapping."""
    if _is_text(tp):
        if text == "" and type(None) in typing.get_args(tp):
            return None
        return decode_escapes(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "3e-4" as a string (it wants "3.0e-4"); numbers win here.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def decode_escapes(text: str) -> str:
    """`\\n` → newline, `\\t` → tab, `\\\\` → one backslash; any other backslash stays."""
    return re.sub(r"\\([nt\\])", lambda m: ESCAPES[m[1]], text)


def _is_text(tp: Any) -> bool:
    if tp is str:
        return True
    args = typing.get_args(tp)
    union = typing.get_origin(tp) in (Union, types.UnionType)
    return union and str in args and set(args) <= {str, type(None)}


def field_type(cls: type | None, dotted: str) -> Any:
    """The annotation of field `a.b.c` of nested dataclass `cls`; None where there is none."""
    tp: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp) or part not in _fields(tp):
            return None
        tp = _hints(tp)[part]
    return tp


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested mapping, creating levels as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a group of fields")
        node = child
    node[parts[-1]] = value


def apply_overrides(
    data: dict[str, Any], overrides: list[str], cls: type | None = None
) -> dict[str, Any]:
    """Apply `key.sub=value` strings (a leading `--` is allowed) to a nested mapping.

    With the config dataclass `cls`, each value is read for its field's type (parse_value).
    A list field takes a YAML list or one item; the first override of a list replaces what
    the mapping held, later ones extend it (`--stop a --stop b` → [a, b])."""
    extended: set[str] = set()
    for item in overrides:
        item = item.removeprefix("--")
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.field=value")
        key, text = item.split("=", 1)
        key = key.strip()
        tp = field_type(cls, key)
        if typing.get_origin(tp) is list:
            items = parse_value(text)
            if not isinstance(items, list):
                inner = typing.get_args(tp)[0] if typing.get_args(tp) else None
                items = [parse_value(text, inner)]
            value = (get_dotted(data, key) if key in extended else []) + items
            extended.add(key)
        else:
            value = parse_value(text, tp)
        set_dotted(data, key, value)
    return data


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """The value at `a.b.c` in a nested mapping (None where a level is missing)."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    return data


def load(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Defaults ← YAML file ← dotted overrides, checked field by field."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [], cls)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.message}" if path else e.message, fix=e.fix) from None


def save_yaml(obj: Any, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))


def arg(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    positional: bool = False,
    aliases: tuple[str, ...] = (),
    choices: Callable[[], Iterable[str]] | None = None,
) -> Any:
    """A config field with command-line settings: `prompt: str = arg("", positional=True)`.

    positional  typed without a flag (`lmforge data stats FILE...`); a list takes one or more
    aliases     more flags for the field (`--max` for `max_records`)
    choices     the registered names, listed in --help (read when the help is built)
    """
    meta = {"flag": {"positional": positional, "aliases": aliases, "choices": choices}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_docs(cls: type) -> dict[str, str]:
    """The one-line comment after each field of a config dataclass (`lr: float = 3e-4  # ...`)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            docs[match.group(1)] = match.group(2).strip()
    return docs


class Leaf(NamedTuple):
    name: str  # dotted path, e.g. train.lr
    type: Any  # the annotation
    doc: str  # the field's comment
    meta: dict[str, Any]  # arg() settings (empty for an ordinary flag)
    required: bool  # the field has no default


def leaf_fields(cls: type, prefix: str = "") -> list[Leaf]:
    """Every leaf field of a nested config dataclass, for command-line flags."""
    hints, docs = _hints(cls), field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, name + ".")
        else:
            meta = dict(f.metadata.get("flag", {}))
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out.append(Leaf(name, tp, docs.get(f.name, ""), meta, required))
    return out


def pick(cls: type[C], obj: Any) -> C:
    """An instance of dataclass `cls` from the same-named fields of `obj` (a wider config)."""
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if f.init})
