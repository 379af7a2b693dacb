"""Tool descriptions from signatures: exact schemas, parity with transformers, refusals."""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest
from transformers.utils import get_json_schema

from lmforge.errors import ConfigError
from lmforge.tools.schema import function_schema, parse_docstring


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def weather(city: str, days: int = 3, unit: Literal["c", "f"] = "c") -> str:
    """Forecast the weather.

    Looks the city up first.

    Args:
        city: the city's name, e.g. "Paris" or "北京"
        days: how many days ahead,
            counted from today
        unit: degrees Celsius or Fahrenheit

    Returns:
        one line per day
    """
    return ""


def mixed(
    tags: list[str],
    scores: dict[str, float],
    pair: tuple[int, str],
    mode: str | None = None,
    n: int | str = 1,
    color: Color = Color.RED,
    flag: bool = False,
    anything: Any = None,
) -> None:
    """Take many kinds of arguments.

    Args:
        tags: labels
        scores: a score per name
        pair: a number and a word
        mode: how to run (choices: ["fast", "slow"])
        n: a count or a word
        color: a colour
        flag: switch it on
        anything: whatever
    """


def test_weather_schema_exact():
    assert function_schema(weather) == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Forecast the weather.\n\nLooks the city up first.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {
                        "type": "string",
                        "description": 'the city\'s name, e.g. "Paris" or "北京"',
                    },
                    "days": {
                        "type": "integer",
                        "description": "how many days ahead, counted from today",
                        "default": 3,
                    },
                    "unit": {
                        "type": "string",
                        "enum": ["c", "f"],
                        "description": "degrees Celsius or Fahrenheit",
                        "default": "c",
                    },
                },
                "required": ["city"],
            },
            "return": {"type": "string", "description": "one line per day"},
        },
    }


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_defaults(v) for k, v in schema.items() if k != "default"}
    return schema


@pytest.mark.parametrize("fn", [weather, mixed])
def test_equals_transformers_get_json_schema_apart_from_defaults(fn):
    ours = function_schema(fn)
    theirs = get_json_schema(fn)
    assert _without_defaults(ours) == theirs


def test_mixed_types():
    props = function_schema(mixed)["function"]["parameters"]["properties"]
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "description": "labels"}
    assert props["scores"]["additionalProperties"] == {"type": "number"}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert props["mode"] == {
        "type": "string",
        "nullable": True,
        "enum": ["fast", "slow"],
        "description": "how to run",
        "default": None,
    }
    assert props["n"]["type"] == ["integer", "string"]
    assert props["color"] == {
        "type": "string",
        "enum": ["red", "blue"],
        "description": "a colour",
        "default": "red",
    }
    assert props["anything"] == {"description": "whatever", "default": None}
    assert function_schema(mixed)["function"]["parameters"]["required"] == [
        "tags",
        "scores",
        "pair",
    ]


def test_docstring_sections_and_continuations():
    doc = """Do it.

    Arguments:
        a (int): first
          still first
        b: second

    Raises:
        ValueError: never
    """
    assert parse_docstring(doc) == ("Do it.", {"a": "first still first", "b": "second"}, None)


def test_refusals_name_the_argument():
    def no_hint(x):
        """Doc."""

    def star(*xs: int):
        """Doc."""

    def no_doc(x: int):
        pass

    def odd(x: complex):
        """Doc."""

    def bad_default(x: object = object()):
        """Doc."""

    with pytest.raises(ConfigError, match=r"tool no_hint, argument 'x': add a type hint"):
        function_schema(no_hint)
    with pytest.raises(ConfigError, match=r"\*args and \*\*kwargs"):
        function_schema(star)
    with pytest.raises(ConfigError, match=r"tool no_doc: give the function a docstring"):
        function_schema(no_doc)
    with pytest.raises(ConfigError, match=r"argument 'x': the type <class 'complex'> has no JSON"):
        function_schema(odd)
    with pytest.raises(ConfigError, match=r"has no JSON Schema"):
        function_schema(bad_default)
