"""A typed, documented Python function → the JSON Schema description of a tool.

    def convert(amount: float, unit: Literal["km", "mi"] = "km") -> str:
        '''Convert a distance.

        Args:
            amount: how far
            unit: the unit of `amount`
        '''
            │  type hints → types, Literal/Enum → enum, defaults → default, not required
            │  Google-style docstring → description and one description per argument
            ▼
    {"type": "function",
     "function": {"name": "convert", "description": "Convert a distance.",
       "parameters": {"type": "object",
         "properties": {"amount": {"type": "number", "description": "how far"},
                        "unit": {"type": "string", "enum": ["km", "mi"],
                                 "description": "the unit of `amount`", "default": "km"}},
         "required": ["amount"]}}}

The output is the OpenAI `tools` entry, and it equals what transformers' `get_json_schema`
writes for the same function (that function is what `apply_chat_template(tools=[fn])`
uses), except that lmforge also states each default. As there: `X | None` adds
"nullable": true, a union of plain types lists them ({"type": ["integer", "string"]}), and
"(choices: [...])" at the end of an argument's description is an enum.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from lmforge.errors import ConfigError

PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns?|Raises|Yields|Examples?):\s*$")
ARGUMENT = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.S)


def type_schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of one type hint; `where` names the argument in errors."""
    if hint in PLAIN:
        return {"type": PLAIN[hint]}
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        return {**_common_type(values), "enum": values}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {**_common_type(list(args)), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return _union(args, where)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if origin is tuple and len(args) == 2 and args[1] is ...:
            args = args[:1]
        if origin is tuple and args and len(args) > 1:
            return {"type": "array", "prefixItems": [type_schema(a, where) for a in args]}
        return {"type": "array", **({"items": type_schema(args[0], where)} if args else {})}
    if origin is dict or hint is dict:
        value = args[1] if len(args) == 2 else Any
        extra = type_schema(value, where)
        return {"type": "object", **({"additionalProperties": extra} if extra else {})}
    raise ConfigError(
        f"{where}: the type {hint!r} has no JSON Schema here; use str, int, float, bool, "
        "list[...], dict[str, ...], Literal[...], an Enum, or a union of these"
    )


def _common_type(values: list[Any]) -> dict[str, Any]:
    kinds = sorted({PLAIN[type(v)] for v in values if type(v) in PLAIN})
    return {"type": kinds[0]} if len(kinds) == 1 else {}


def _union(args: tuple[Any, ...], where: str) -> dict[str, Any]:
    nullable = type(None) in args
    rest = [a for a in args if a is not type(None)]
    if len(rest) == 1:
        schema = type_schema(rest[0], where)
    elif all(a in PLAIN for a in rest):
        schema = {"type": [PLAIN[a] for a in rest]}
    else:
        schema = {"anyOf": [type_schema(a, where) for a in rest]}
    return {**schema, "nullable": True} if nullable else schema


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str], str | None]:
    """(description, {argument: description}, returns) from a Google-style docstring."""
    head: list[str] = []
    sections: dict[str, list[str]] = {}
    current = None
    for line in inspect.cleandoc(doc or "").splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1).lower()[:3]  # arg, par, ret, rai, yie, exa
            current = "arg" if current == "par" else current
            sections.setdefault(current, [])
        elif current is None:
            head.append(line)
        else:
            sections[current].append(line)
    returns = " ".join(s.strip() for s in sections.get("ret", []) if s.strip()) or None
    return "\n".join(head).strip(), _arguments(sections.get("arg", [])), returns


def _arguments(lines: list[str]) -> dict[str, str]:
    """`name: text` lines at the section's indent; deeper lines continue the text."""
    found: dict[str, str] = {}
    indent, name = None, None
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        match = ARGUMENT.match(line)
        if depth == indent and match:
            name = match.group(1)
            found[name] = match.group(2).strip()
        elif name is not None:
            found[name] = (found[name] + " " + line.strip()).strip()
    return found


def function_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The OpenAI-style tool description of `fn` (see the module docstring)."""
    label = name or fn.__name__
    description, documented, returns = parse_docstring(fn.__doc__)
    if not description:
        raise ConfigError(f"tool {label}: give the function a docstring that says what it does")
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for param in inspect.signature(fn).parameters.values():
        where = f"tool {label}, argument {param.name!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"{where}: *args and **kwargs cannot be described; name each one")
        if param.name not in hints:
            raise ConfigError(f"{where}: add a type hint (e.g. `{param.name}: str`)")
        schema = type_schema(hints[param.name], where)
        text = documented.get(param.name, "")
        choices = CHOICES.search(text)
        if choices:
            schema["enum"] = json.loads(choices.group(1))
            text = text[: choices.start()].strip()
        if text:
            schema["description"] = text
        if param.default is param.empty:
            required.append(param.name)
        else:
            schema["default"] = _json_value(param.default, where)
        properties[param.name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    function: dict[str, Any] = {"name": label, "description": description, "parameters": parameters}
    if "return" in hints:
        function["return"] = type_schema(hints["return"], f"tool {label}")
        function["return"].update({"description": returns} if returns else {})
    return {"type": "function", "function": function}


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except TypeError:
        raise ConfigError(f"{where}: the default {value!r} is not a JSON value") from None
    return value
