"""The classification objective (`lmforge finetune --task classification` builds it).

Each class c is scored by the log-likelihood of its label word's whole token sequence y_c
after the prompt x (a verbalizer, Schick & Schütze 2021), so any causal LM — and every
delta method — classifies through its own head, whatever the number of tokens a word takes:

    s_c = norm( Σ_j log p(y_c,j | x, y_c,<j) )  →  cross-entropy over c

norm is a NORMALIZERS entry (sum, mean per token, mean per character). The prompt is
computed once per example and the label tokens are read through its KV cache
(model/continuations.py). With one token per label and "sum", s_c is the label logit minus
the log-partition, so the loss is the cross-entropy of the label logits renormalised over
the classes, in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.data.loader import Batch
from lmforge.model.continuations import (
    NORMALIZERS,
    Continuations,
    check_label_sequences,
    score_continuations,
)
from lmforge.tokenizer import Tokenizer


@dataclass(frozen=True)
class LabelWords:
    """Each class's label word and the tokens that spell it after the prompt."""

    words: list[str]  # one word per class, in class order
    sequences: list[list[int]]  # the tokens of " " + word
    chars: list[int]  # characters of " " + word (per-character normalisation)

    @classmethod
    def encode(
        cls, tokenizer: Tokenizer, words: Sequence[str], where: str = "labels"
    ) -> LabelWords:
        """ " word" per class; identical token sequences are refused, lone byte pieces flagged."""
        texts = [" " + w for w in words]
        sequences = [tokenizer.encode(t) for t in texts]
        check_label_sequences(tokenizer, dict(zip(words, sequences)), where)
        return cls(list(words), sequences, [len(t) for t in texts])

    def spelled(self) -> tuple[list[str], list[list[int]]]:
        """(words, token sequences), class by class."""
        return self.words, self.sequences

    @property
    def longest(self) -> int:
        """Tokens of the longest label word."""
        return max(len(s) for s in self.sequences)


def class_scores(
    model: nn.Module, batch: Batch, words: LabelWords, normalize: str = "sum"
) -> Tensor:
    """(B, C) normalised log-likelihoods of each class's label word after each prompt
    (batch: left-padded input_ids and attention_mask)."""
    B, C = batch["input_ids"].shape[0], len(words.sequences)
    cont = Continuations.same_for_all(words.sequences, B)
    logp = score_continuations(model, batch["input_ids"], batch["attention_mask"], cont)
    totals = logp.total().view(B, C)  # (B, C)
    tokens = torch.tensor([len(s) for s in words.sequences], device=totals.device)
    chars = torch.tensor(words.chars, device=totals.device)
    return NORMALIZERS.get(normalize)(totals, tokens, chars)


class ClassificationObjective:
    """Cross-entropy over classes of the label words' normalised log-likelihoods."""

    def __init__(self, words: LabelWords, normalize: str = "sum") -> None:
        NORMALIZERS.get(normalize)  # an unknown name fails here, not at the first step
        self.words, self.normalize = words, normalize

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        scores = class_scores(model, batch, self.words, self.normalize)
        return F.cross_entropy(scores, batch["class_ids"])


@torch.no_grad()
def accuracy(
    model: nn.Module, batches: Sequence[Batch], words: LabelWords, normalize: str = "sum"
) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in batches:
        pred = class_scores(model, batch, words, normalize).argmax(-1).cpu()
        correct += int((pred == batch["class_ids"]).sum())
        total += len(pred)
    model.train(was_training)
    return correct / max(1, total)
