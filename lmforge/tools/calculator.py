"""A calculator that evaluates arithmetic through Python's syntax tree, never `eval`.

    "4,732 - 1298 + 3 × 256"  ──normalise──►  "4732 - 1298 + 3 * 256"
                              ──ast.parse──►  BinOp(BinOp(4732 - 1298) + BinOp(3 * 256))
                              ──walk──────►   Fraction arithmetic  ──►  "4202"

Only numbers, + - * / // % ** and unary signs are accepted: no names, no attributes, no
calls, no subscripts, so nothing but arithmetic can run. Work is bounded before it is done:
at most 200 characters and 64 syntax nodes, exponents up to 64 (and only on small enough
bases), every intermediate value below 10^100. Numbers are exact rationals (0.1 + 0.2 is
0.3); a result that is not whole is shown with 12 significant digits. Thousands separators
("4,732"), × and ÷, and ^ for powers are read the way people write them.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from fractions import Fraction

from lmforge.tools.registry import Tool, ToolError, tool

MAX_CHARS = 200
MAX_NODES = 64
MAX_EXPONENT = 64
MAX_DIGITS = 100  # every intermediate value stays below 10**MAX_DIGITS

BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def normalise(expression: str) -> str:
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 4,732 → 4732
    return text.replace("^", "**")


def _check(value: Fraction) -> Fraction:
    if abs(value) >= 10**MAX_DIGITS or value.denominator >= 10**MAX_DIGITS:
        raise ToolError(f"result too large (the limit is 10^{MAX_DIGITS})")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolError("only whole-number exponents are supported")
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {exponent} is too large (at most {MAX_EXPONENT})")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero")
    size = max(abs(base.numerator), base.denominator)
    if size > 1 and abs(exponent) * math.log10(size) >= MAX_DIGITS:
        raise ToolError(f"result too large (the limit is 10^{MAX_DIGITS})")
    return base ** int(exponent)


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _check(_power(_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if right == 0 and type(node.op) in (ast.Div, ast.FloorDiv, ast.Mod):
            raise ToolError("division by zero")
        return _check(Fraction(BINARY[type(node.op)](left, right)))
    raise ToolError(f"only numbers and + - * / // % ** are allowed, not {_describe(node)}")


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Constant):
        return f"the value {node.value!r}"
    return f"{type(node).__name__.lower()} syntax"


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.12g}"


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; ToolError says why it cannot be computed."""
    text = normalise(expression)
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_CHARS:
        raise ToolError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"{expression!r} is not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ToolError(f"the expression has more than {MAX_NODES} parts")
    return _evaluate(tree)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "(4732 - 1298) * 3".

    Args:
        expression: numbers with + - * / // % ** and parentheses
    """
    return format_number(evaluate(expression))


calculator: Tool = tool(calculate, name="calculator")
