"""Contextual calibration (Zhao et al., 2021, "Calibrate Before Use").

A few-shot prompt biases a model towards some labels (the majority label of the
demonstrations, the most recent one, common words). The bias shows when the query carries
no content: fill the query's fields with content-free strings ("N/A", "[MASK]", "") and
read the class probabilities p_cf. Each test prediction p is then corrected with

    W = diag(p_cf)^-1,  b = 0:     q = softmax(W p)

so a content-free input would come out uniform. p are the probabilities of the label
words renormalised over the classes (a softmax of the class log-likelihoods); p_cf is the
mean of those over the content-free inputs, renormalised. The paper's softmax is kept;
the argmax of q is the argmax of p / p_cf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from lmforge.errors import DataError

CONTENT_FREE: tuple[str, ...] = ("N/A", "[MASK]", "")


def content_free_fields(fields: Sequence[str], text: str) -> Mapping[str, str]:
    """Every field of the query template set to the content-free string."""
    return {name: text for name in fields}


@dataclass(frozen=True)
class ContextualCalibration:
    p_cf: Tensor  # (C,) class probabilities of the content-free inputs, summing to 1

    @classmethod
    def fit(cls, content_free_scores: Tensor) -> ContextualCalibration:
        """From the class log-scores (N_cf, C) of the content-free inputs of one prompt."""
        if content_free_scores.dim() != 2 or content_free_scores.shape[0] == 0:
            raise DataError("calibration needs the scores (N_cf, C) of at least one input")
        probs = content_free_scores.float().softmax(dim=-1).mean(dim=0)  # (C,)
        return cls(probs / probs.sum())

    def __call__(self, scores: Tensor) -> Tensor:
        """Calibrated class probabilities (N, C) from class log-scores (N, C)."""
        p = scores.float().softmax(dim=-1)  # (N, C)
        return (p / self.p_cf).softmax(dim=-1)  # W p with W = diag(p_cf)^-1, then softmax
