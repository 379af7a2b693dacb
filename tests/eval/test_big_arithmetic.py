"""Word problems with 3- and 4-digit quantities: deterministic, and the rationale adds up."""

from __future__ import annotations

import re

import pytest

from lmforge.errors import ConfigError
from lmforge.eval.arithmetic import generate_big_problems
from lmforge.tools.calculator import calculate


@pytest.mark.parametrize("digits", [3, 4])
def test_rationales_compute_the_answer(digits):
    problems = generate_big_problems(30, 2, digits, seed=0)
    assert problems == generate_big_problems(30, 2, digits, seed=0)
    assert problems != generate_big_problems(30, 2, digits, seed=1)
    for p in problems:
        start = int(re.search(r"\d+", p.question).group())
        assert len(str(start)) == digits and p.level == 2 and p.answer > 0
        equations = re.findall(r"(\d+ [-+*] \d+) = (\d+)\.", p.rationale)
        assert all(calculate(left) == right for left, right in equations)
        assert equations[-1][1] == str(p.answer)
        assert p.question.endswith("have now?")


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="2-6 digits"):
        generate_big_problems(1, 2, 9)
