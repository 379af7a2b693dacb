"""Overlap of two strings: one score per (prediction, reference) pair, in [0, 1].

    exact_match   1 if they are equal after normalisation (SQuAD, Rajpurkar et al., 2016):
                  lower case, punctuation and the articles a/an/the removed, spaces collapsed
    token_f1      harmonic mean of token precision and recall over the normalised tokens,
                  counting repeated tokens as often as both sides hold them (SQuAD)
    rouge_l       F-measure of the longest common subsequence of normalised tokens
                  (Lin, 2004), P = LCS / |prediction|, R = LCS / |reference|, β = 1

An empty side scores 1 only when both are empty (token_f1, rouge_l). Plain string
functions: evaluation scores answers with them, Self-Instruct filters near-duplicates.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

# Scripts written without spaces between words (kana, CJK ideographs, Hangul): a character
# class body, for patterns that must not look for word boundaries inside them.
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_text(prediction) == normalize_text(reference))


def _f(overlap: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


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


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    return _f(lcs_length(pred, ref), len(pred), len(ref))
