"""Tools: a described function, the calls a model makes, and the box that runs them safely.

    @tool                                   Toolbox([add, calculator])
    def add(a: int, b: int) -> int:           .specs()  → OpenAI `tools` list for the template
        '''Add two numbers.                   .call(ToolCall("add", '{"a": 2, "b": "x"}'))
                                                    │ unknown tool? arguments not JSON? not
        Args:                                       │ valid under the schema? the tool raised?
            a: first                                ▼
            b: second                         ToolResult(content="add: invalid arguments: b:
        '''                                           expected integer, got string \"x\"",
        return a + b                                  error=True)

Nothing a model writes makes `call` raise: every mistake becomes a tool message the model
reads on its next turn. A tool that wants to refuse something with a plain message raises
`ToolError`; any other exception is reported with its type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import ConfigError
from lmforge.tools.schema import function_schema
from lmforge.tools.validate import validate


class ToolError(Exception):
    """Raised by a tool to refuse a call; the message goes to the model as the result."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    fn: Callable[..., Any] = field(repr=False)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None) -> Tool:
        spec = function_schema(fn, name)["function"]
        return cls(spec["name"], spec["description"], spec["parameters"], fn)

    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools` entry."""
        function = {"name": self.name, "description": self.description}
        return {"type": "function", "function": {**function, "parameters": self.parameters}}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Decorator: `@tool` or `@tool(name="...")` turns a typed, documented function into a Tool."""
    if fn is None:
        return lambda f: Tool.from_function(f, name)
    return Tool.from_function(fn, name)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str  # parsed, or the raw text the model wrote
    id: str = ""

    def parsed(self) -> tuple[dict[str, Any] | None, str | None]:
        """(arguments as an object, or None with the reason they are not one)."""
        args = self.arguments
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                return None, f"arguments are not valid JSON ({e.msg} at character {e.pos})"
        if not isinstance(args, dict):
            return None, f"arguments must be a JSON object, got {type(args).__name__}"
        return args, None

    def to_openai(self) -> dict[str, Any]:
        """The assistant message's `tool_calls` entry (arguments as a JSON string)."""
        args = self.arguments
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": text},
        }

    @classmethod
    def from_openai(cls, entry: Mapping[str, Any]) -> ToolCall:
        function = entry.get("function", entry)
        return cls(function.get("name", ""), function.get("arguments", {}), entry.get("id", ""))


@dataclass
class ToolResult:
    name: str
    content: str  # what the model reads
    error: bool = False  # the call did not run, or the tool refused or failed
    call_id: str = ""

    def message(self) -> dict[str, Any]:
        """The `tool` role message that answers the call."""
        message = {"role": "tool", "name": self.name, "content": self.content}
        return {**message, "tool_call_id": self.call_id} if self.call_id else message


class Toolbox:
    """The tools an agent may use, by name."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self.tools: dict[str, Tool] = {}
        for t in tools:
            t = t if isinstance(t, Tool) else Tool.from_function(t)
            if t.name in self.tools:
                raise ConfigError(f"two tools are named {t.name!r}; give one another name")
            self.tools[t.name] = t

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def names(self) -> list[str]:
        return list(self.tools)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools.values()]

    def check(self, call: ToolCall) -> tuple[Tool | None, dict[str, Any] | None, str | None]:
        """(tool, arguments, None) for a call that may run, else (.., .., the reason)."""
        t = self.tools.get(call.name)
        if t is None:
            return None, None, f"unknown tool {call.name!r}; available: {', '.join(self.tools)}"
        args, problem = call.parsed()
        if problem is None:
            errors = validate(args, t.parameters)
            problem = "invalid arguments: " + "; ".join(errors) if errors else None
        return t, args, problem

    def call(self, call: ToolCall) -> ToolResult:
        """Validate and run one call; every failure is a result with error=True."""
        t, args, problem = self.check(call)
        if problem is not None:
            return ToolResult(call.name, f"{call.name}: {problem}", True, call.id)
        try:
            value = t.fn(**args)
        except ToolError as e:
            return ToolResult(call.name, f"{call.name}: {e}", True, call.id)
        except Exception as e:  # noqa: BLE001 - the model reads what went wrong
            return ToolResult(
                call.name, f"{call.name} failed: {type(e).__name__}: {e}", True, call.id
            )
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return ToolResult(call.name, text, False, call.id)
