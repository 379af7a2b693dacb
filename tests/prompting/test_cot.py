"""Contextual calibration by hand; chain-of-thought answers, extraction and majority vote."""

import math

import pytest
import torch

from lmforge.errors import DataError, RegistryError
from lmforge.prompting import (
    CONTENT_FREE,
    EXTRACTORS,
    REASONING,
    ContextualCalibration,
    Sample,
    content_free_fields,
    cot_answer,
    majority_vote,
)
from lmforge.prompting.cot import canonical_number


def test_calibration_by_hand():
    # content-free probabilities [.8, .2] and [.6, .4] → p_cf = [.7, .3]
    cal = ContextualCalibration.fit(torch.tensor([[0.8, 0.2], [0.6, 0.4]]).log())
    assert cal.p_cf.tolist() == pytest.approx([0.7, 0.3])
    # p = [.6, .4]: W p = [.6/.7, .4/.3]; q = softmax(W p), so q0 = 1 / (1 + e^(.4/.3 - .6/.7))
    q = cal(torch.tensor([[0.6, 0.4]]).log())
    q0 = 1 / (1 + math.exp(0.4 / 0.3 - 0.6 / 0.7))
    assert q[0].tolist() == pytest.approx([q0, 1 - q0], abs=1e-6)
    assert int(q.argmax()) == 1  # the bias towards class 0 is removed: the choice flips
    # a content-free input comes out uniform
    assert cal(torch.tensor([[0.7, 0.3]]).log())[0].tolist() == pytest.approx([0.5, 0.5])


def test_calibration_scores_are_log_scores_any_offset():
    scores = torch.tensor([[-3.0, -1.0, -2.0]])
    cal = ContextualCalibration.fit(torch.tensor([[-5.0, -5.0, -5.0]]))
    assert torch.allclose(cal(scores), cal(scores + 7.0))  # only differences matter
    with pytest.raises(DataError, match="at least one"):
        ContextualCalibration.fit(torch.zeros(0, 3))


def test_content_free_inputs():
    assert CONTENT_FREE == ("N/A", "[MASK]", "")
    assert content_free_fields(("text", "title"), "N/A") == {"text": "N/A", "title": "N/A"}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("first-number", "I have 1,234 apples and 5 pears", "1234"),
        ("first-number", "no digits here", None),
        ("last-number", "3 + 4 = 7.", "7"),
        ("answer-is", "9 - 2 = 7. 7 * 2 = 14. The answer is 14. Then 3", "14"),
        ("answer-is", "The answer is 5.\nQuestion: 2 + 2? The answer is 4.", "5"),
        ("answer-is", "the answer is: 12.0", "12"),
        ("answer-is", "no marker, 3 then 9", "9"),
        ("first-line", "  sport\nmore", "sport"),
        ("first-line", "   ", None),
    ],
)
def test_extractors(name, text, expected):
    assert EXTRACTORS.get(name)(text) == expected


def test_canonical_numbers():
    assert [canonical_number(t) for t in ["17.0", "-3.50", "1,000", "0"]] == [
        "17",
        "-3.5",
        "1000",
        "0",
    ]


def test_majority_vote_ties_go_to_the_first_seen():
    assert majority_vote(["3", None, "5", "5", "3"]) == "3"
    assert majority_vote([None, "5", "3", "5"]) == "5"
    assert majority_vote([None, None]) is None and majority_vote([]) is None


def test_reasoning_styles():
    sample = Sample({"question": "q"}, "9", rationale="Mia starts with 7. 7 + 2 = 9.")
    assert REASONING.get("direct").demo_answer(sample) == "9"
    assert cot_answer(sample) == "Mia starts with 7. 7 + 2 = 9. The answer is 9."
    cot = REASONING.get("cot")
    assert cot.extractor == "answer-is" and cot.rationale
    assert cot.zero_shot_trigger == "Let's think step by step."
    with pytest.raises(DataError, match="no rationale"):
        cot.demo_answer(Sample({"question": "q"}, "9"))
    with pytest.raises(RegistryError, match="registered: cot, direct"):
        REASONING.get("tree-of-thought")
