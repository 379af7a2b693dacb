"""Prompt learning without training: templates, verbalizers, demonstrations, calibration,
chain-of-thought and self-consistency.

    template.py     Sample, Template (named fields), Verbalizer (label → words), PromptFormat
    select.py       demonstration selection: fixed, random, balanced, nearest (SELECTORS)
    embed.py        SentenceEncoder: all-MiniLM-L6-v2, mean-pooled and L2-normalised
    calibration.py  contextual calibration (Zhao et al., 2021)
    cot.py          chain-of-thought styles (REASONING), answer extraction, majority vote
"""

from lmforge.prompting.calibration import CONTENT_FREE, ContextualCalibration, content_free_fields
from lmforge.prompting.cot import (
    ANSWER_TRIGGER,
    EXTRACTORS,
    REASONING,
    TRIGGER,
    Reasoning,
    cot_answer,
    majority_vote,
)
from lmforge.prompting.embed import SentenceEncoder, mean_pool
from lmforge.prompting.select import (
    SELECTORS,
    SelectionConfig,
    Selector,
    check_shots,
    make_selector,
)
from lmforge.prompting.template import PromptFormat, Sample, Template, Verbalizer

__all__ = [
    "ANSWER_TRIGGER",
    "CONTENT_FREE",
    "EXTRACTORS",
    "REASONING",
    "SELECTORS",
    "TRIGGER",
    "ContextualCalibration",
    "PromptFormat",
    "Reasoning",
    "Sample",
    "SelectionConfig",
    "Selector",
    "SentenceEncoder",
    "Template",
    "Verbalizer",
    "check_shots",
    "content_free_fields",
    "cot_answer",
    "majority_vote",
    "make_selector",
    "mean_pool",
]
