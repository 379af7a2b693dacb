"""The prompting lab: its plan, its verdicts read off the tables, its registration."""

import pytest

from lmforge.lab import LABS, run_experiment
from lmforge.lab.prompting import (
    arithmetic_conditions,
    arithmetic_verdict,
    bbc_conditions,
    bbc_verdict,
    plan,
)


def test_the_plan_covers_every_condition():
    names = [c.name for c in bbc_conditions(plan(False))]
    assert names == [
        "zero-shot", "zero-shot, calibrated", "K=1 random", "K=4 random", "K=8 random",
        "K=4 nearest (MiniLM)", "K=4 fixed", "K=4 fixed, calibrated",
    ]  # fmt: skip
    roles = [c.role for c in arithmetic_conditions(plan(True))]
    assert roles == ["direct", "cot", "zero-cot", "self-consistency"]
    assert arithmetic_conditions(plan(True))[3].settings["samples"] == 3


def test_verdicts_read_the_tables():
    rows = [
        dict(role="zero", shots=0, accuracy=0.4),
        dict(role="zero-cal", shots=0, accuracy=0.5),
        dict(role="random", shots=1, accuracy=0.45),
        dict(role="random", shots=4, accuracy=0.6),
        dict(role="nearest", shots=4, accuracy=0.7),
        dict(role="fixed", shots=4, accuracy=0.55),
        dict(role="fixed-cal", shots=4, accuracy=0.5),
    ]
    assert bbc_verdict(rows) == (
        "Zero-shot accuracy was 40% (chance: 20%); with 4 random demonstrations it was 60% "
        "(+20 points). With 4 demonstrations, nearest neighbours gave 70% against 60% for "
        "random ones. Calibration moved zero-shot accuracy by +10 points and fixed few-shot "
        "accuracy by -5 points."
    )
    arith = [
        dict(role="direct", mean=0.2),
        dict(role="cot", mean=0.1),
        dict(role="zero-cot", mean=0.0),
        dict(role="self-consistency", mean=0.15),
    ]
    assert arithmetic_verdict(arith) == (
        "Mean accuracy over the levels: direct 20%, chain-of-thought 10%, zero-shot "
        "chain-of-thought 0%, self-consistency 15%."
    )


def test_the_lab_is_registered():
    exp = LABS.get("prompting")
    assert exp.minutes == 25 and "chain-of-thought" in exp.claim


@pytest.mark.slow
@pytest.mark.assets
def test_prompting_quick_writes_a_report(tmp_path):
    path = run_experiment("prompting", tmp_path / "lab", quick=True)
    text = path.read_text()
    assert "| zero-shot |" in text and "| zero-shot CoT |" in text
    assert (tmp_path / "lab" / "bbc.png").stat().st_size > 1000
    assert (tmp_path / "lab" / "arithmetic.png").stat().st_size > 1000
