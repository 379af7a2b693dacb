"""Metrics: one score per (prediction, reference) pair; a task reports their mean.

accuracy      1 if the prediction equals the reference exactly (labels, numbers)
exact_match   equal after normalisation    ┐
token_f1      token overlap (SQuAD)        ├─ lmforge/text_metrics.py
rouge_l       longest common subsequence   ┘
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmforge.errors import DataError
from lmforge.registry import Registry
from lmforge.text_metrics import exact_match, rouge_l, token_f1

Metric = Callable[[str, str], float]
METRICS: Registry[Metric] = Registry("metric")


@METRICS.register("accuracy")
def accuracy(prediction: str, reference: str) -> float:
    return float(prediction == reference)


METRICS.add("exact_match", exact_match)
METRICS.add("token_f1", token_f1)
METRICS.add("rouge_l", rouge_l)


def mean_metric(name: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """The mean of metric `name` over aligned predictions and references."""
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise DataError(f"metric {name}: nothing to score")
    metric = METRICS.get(name)
    return sum(metric(p, r) for p, r in zip(predictions, references)) / len(predictions)
