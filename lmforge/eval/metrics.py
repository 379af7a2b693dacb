"""Metrics: one score per (prediction, reference) pair; a task reports their mean.

    accuracy      1 if the prediction equals the reference exactly (labels, numbers)
    exact_match   1 if they are equal after normalisation (SQuAD, Rajpurkar et al., 2016):
                  lower case, punctuation and the articles a/an/the removed, spaces collapsed
    token_f1      harmonic mean of token precision and recall over the normalised tokens,
                  counting repeated tokens as often as both sides hold them (SQuAD)
    rouge_l       F-measure of the longest common subsequence of normalised tokens
                  (Lin, 2004), P = LCS / |prediction|, R = LCS / |reference|, β = 1

An empty side scores 1 only when both are empty (token_f1, rouge_l).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from lmforge.errors import DataError
from lmforge.registry import Registry

Metric = Callable[[str, str], float]
METRICS: Registry[Metric] = Registry("metric")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


@METRICS.register("accuracy")
def accuracy(prediction: str, reference: str) -> float:
    return float(prediction == reference)


@METRICS.register("exact_match")
def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_text(prediction) == normalize_text(reference))


def _f(overlap: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


@METRICS.register("token_f1")
def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f(overlap, len(pred), len(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


@METRICS.register("rouge_l")
def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    return _f(lcs_length(pred, ref), len(pred), len(ref))


def mean_metric(name: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """The mean of metric `name` over aligned predictions and references."""
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise DataError(f"metric {name}: nothing to score")
    metric = METRICS.get(name)
    return sum(metric(p, r) for p, r in zip(predictions, references)) / len(predictions)
