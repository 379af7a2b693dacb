"""The calculator: exact arithmetic through the syntax tree, everything else refused."""

from __future__ import annotations

import pytest

from lmforge.tools import Toolbox, ToolCall, calculate, calculator
from lmforge.tools.calculator import evaluate
from lmforge.tools.registry import ToolError


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("4732 - 1298 + 3 * 256", "4202"),
        ("4,732 × 3 ÷ 2", "7098"),
        ("(1 + 2) ** 3 - 2^2", "23"),
        ("0.1 + 0.2", "0.3"),
        ("7 / 2", "3.5"),
        ("1 / 3", "0.333333333333"),
        ("-7 // 2 + 17 % 5", "-2"),
        ("2 ** -2", "0.25"),
        ("9999 * 9999", "99980001"),
    ],
)
def test_values(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('ls')", "not call syntax"),
        ("x + 1", "not the name 'x'"),
        ("(1).real", "not attribute syntax"),
        ("'a' * 3", "not the value 'a'"),
        ("True + 1", "not the value True"),
        ("[1, 2][0]", "not subscript syntax"),
        ("1 if 1 else 2", "not ifexp syntax"),
        ("lambda: 1", "not lambda syntax"),
        ("1 << 100", "not binop syntax"),
        ("1 / 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ** 65", "exponent 65 is too large"),
        ("99 ** 60", "result too large"),
        ("10 ** 50 * 10 ** 50", "result too large"),
        ("2 ** 0.5", "whole-number exponents"),
        ("1 +", "is not an arithmetic expression"),
        ("", "the expression is empty"),
        ("1+" * 101 + "1", "longer than 200 characters"),
        ("-" * 70 + "1", "more than 64 parts"),
    ],
)
def test_refusals(expression, message):
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace("*", r"\*")):
        evaluate(expression)


def test_as_a_tool_errors_reach_the_model():
    box = Toolbox([calculator])
    assert box.call(ToolCall("calculator", {"expression": "12 * 12"})).content == "144"
    bad = box.call(ToolCall("calculator", {"expression": "open('/etc/passwd')"}))
    assert bad.error and bad.content.startswith("calculator: only numbers")
    assert calculator.parameters["required"] == ["expression"]
