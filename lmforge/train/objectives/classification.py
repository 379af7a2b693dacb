"""The classification objective (`lmforge finetune --task classification` builds it).

Each class is scored by the logit of its label word at the row's last token (a verbalizer,
Schick & Schütze 2021), so any causal LM — and every delta method — classifies through its
own head:

    logits[b, last_b, label_token_c]  →  softmax over classes c
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.data.loader import Batch
from lmforge.errors import ConfigError


def label_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """The first token of " label" for each class; classes must start with different tokens."""
    ids = [tokenizer.encode(" " + label)[0] for label in labels]
    if len(set(ids)) != len(ids):
        raise ConfigError(
            f"labels {list(labels)} share a first token, so a verbalizer cannot tell them "
            "apart; rename them (data.labels)"
        )
    return ids


def class_logits(model: nn.Module, batch: Batch, label_ids: Tensor) -> Tensor:
    """(B, C) scores: the label words' logits at each row's last real token."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows = torch.arange(len(batch["last"]), device=out.logits.device)
    return out.logits[rows, batch["last"]][:, label_ids].float()  # (B, C)


class ClassificationObjective:
    def __init__(self, label_ids: Sequence[int]) -> None:
        self.label_ids = torch.tensor(list(label_ids), dtype=torch.long)

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = class_logits(model, batch, self.label_ids.to(batch["input_ids"].device))
        return F.cross_entropy(logits, batch["class_ids"])


@torch.no_grad()
def accuracy(model: nn.Module, batches: Sequence[Batch], label_ids: Sequence[int]) -> float:
    ids = torch.tensor(list(label_ids))
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in batches:
        pred = class_logits(model, batch, ids).argmax(-1)
        correct += int((pred == batch["class_ids"]).sum())
        total += len(pred)
    model.train(was_training)
    return correct / max(1, total)
