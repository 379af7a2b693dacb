"""Argument validation and the Toolbox: every mistake a model makes becomes a tool message."""

from __future__ import annotations

from typing import Literal

import pytest

from lmforge.errors import ConfigError
from lmforge.tools import Tool, Toolbox, ToolCall, ToolError, tool
from lmforge.tools.validate import validate


@tool
def convert(amount: float, unit: Literal["km", "mi"] = "km", note: str | None = None) -> str:
    """Convert a distance.

    Args:
        amount: how far
        unit: the unit of amount
        note: a remark
    """
    if amount < 0:
        raise ToolError("a distance cannot be negative")
    if amount > 1e6:
        raise RuntimeError("too far")
    return f"{amount * (1.609 if unit == 'mi' else 1):g} km{' ' + note if note else ''}"


def test_validate_reports_every_problem_with_its_path():
    schema = convert.parameters
    assert validate({"amount": 3}, schema) == []
    assert validate({"amount": 2.5, "unit": "mi", "note": None}, schema) == []
    assert validate({"amount": "3", "unit": "m", "speed": 1}, schema) == [
        'amount: expected number, got string "3"',
        'unit: "m" is not one of "km", "mi"',
        "speed: unknown argument (known: amount, unit, note)",
    ]
    assert validate({}, schema) == ["amount: required argument is missing"]
    assert validate({"amount": True}, schema) == ["amount: expected number, got boolean true"]


def test_validate_nested_arrays_bounds_and_unions():
    schema = {
        "type": "object",
        "properties": {
            "xs": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 2},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 2}]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    assert validate({"xs": [1, -1, 2], "pair": [1], "either": "abc", "tags": {"a": 1}}, schema) == [
        "xs: must be at most 2 items long, got [1, -1, 2]",
        "xs[1]: must be at least 0, got -1",
        "pair: expected 2 items, got 1",
        "either: matches none of the allowed forms",
        "tags.a: expected string, got integer 1",
    ]
    assert validate({"pair": [1, "a"], "either": 7, "tags": {"中文": "好"}}, schema) == []


def test_toolbox_runs_valid_calls_and_reports_bad_ones():
    box = Toolbox([convert])
    ok = box.call(ToolCall("convert", '{"amount": 2, "unit": "mi"}', id="c1"))
    assert (ok.content, ok.error, ok.call_id) == ("3.218 km", False, "c1")
    assert ok.message() == {
        "role": "tool",
        "name": "convert",
        "content": "3.218 km",
        "tool_call_id": "c1",
    }
    chinese = box.call(ToolCall("convert", {"amount": 1, "note": "步行"}))
    assert chinese.content == "1 km 步行" and not chinese.error
    cases = [
        (ToolCall("nope", {}), "nope: unknown tool 'nope'; available: convert"),
        (
            ToolCall("convert", '{"amount": 2,'),
            "convert: arguments are not valid JSON (Expecting property name enclosed in double "
            "quotes at character 13)",
        ),
        (ToolCall("convert", "[1]"), "convert: arguments must be a JSON object, got list"),
        (
            ToolCall("convert", {"amount": "x"}),
            'convert: invalid arguments: amount: expected number, got string "x"',
        ),
        (ToolCall("convert", {"amount": -1}), "convert: a distance cannot be negative"),
        (ToolCall("convert", {"amount": 2e6}), "convert failed: RuntimeError: too far"),
    ]
    for call, message in cases:
        result = box.call(call)
        assert (result.content, result.error) == (message, True)


def test_openai_round_trip_and_specs():
    call = ToolCall("convert", {"amount": 1}, id="x")
    entry = call.to_openai()
    assert entry == {
        "id": "x",
        "type": "function",
        "function": {"name": "convert", "arguments": '{"amount": 1}'},
    }
    assert ToolCall.from_openai(entry).parsed() == ({"amount": 1}, None)
    assert Toolbox([convert]).specs() == [
        {
            "type": "function",
            "function": {
                "name": "convert",
                "description": "Convert a distance.",
                "parameters": convert.parameters,
            },
        }
    ]


def test_plain_functions_become_tools_and_names_are_unique():
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: first
            b: second
        """
        return a + b

    box = Toolbox([add])
    assert box.names() == ["add"] and isinstance(box.tools["add"], Tool)
    assert box.call(ToolCall("add", {"a": 2, "b": 3})).content == "5"
    assert tool(name="plus")(add).name == "plus"
    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        Toolbox([add, add])
