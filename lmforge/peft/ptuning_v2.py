"""P-tuning v2 (Liu et al., 2022): deep prompts at every layer, trained directly.

Like prefix-tuning, every layer attends to P trainable key/value pairs ahead of the input;
unlike it, there is no reparameterising MLP — the paper finds it unnecessary (and sometimes
harmful) once prompts sit in every layer — so the trained tensor is the prefix itself:

    prefix (P, L·2·n_kv·hd) ─► per layer k, v (B, n_kv, P, hd) ─► prefilled cache
    input ids ─────────────────────────────────────────────► frozen model ─► logits
                                                                 └─► final hidden state at
                                                                     the last real token
                                                                     ─► Linear ─► class logits

The paper pairs deep prompts with a randomly initialised linear classification head instead
of a verbalizer. `task`:
  generation      the wrapper is a causal LM (training with token labels, `generate`).
  classification  also a `ClassificationHead` (d → num_classes, trained with the prompt):
                  `model.classify(input_ids, attention_mask)` gives (B, C) class logits, and
                  `model(input_ids, attention_mask=..., labels=class_ids)` with labels of
                  shape (B,) returns their cross-entropy as `loss` and the class logits as
                  `logits`. Token labels (B, T) still train the language-model loss, and
                  generation still works. The pooled state is the final (normed) hidden
                  state at each row's last attention_mask == 1 column.
The prefix starts N(0, init_std²): small keys and values leave the model close to (not
exactly) its base output at initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import Geometry, float_placement
from lmforge.peft.base import register
from lmforge.peft.virtual import (
    PrefixCache,
    PromptEncoder,
    VirtualTokenMethod,
    VirtualTokenModel,
)
from lmforge.registry import Registry


class ClassificationHead(nn.Module):
    """Class logits from one pooled hidden state: (B, d) → (B, C)."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled)  # (B, C)


# What each task adds on top of the deep prompt: (width d, num_classes) -> head or None.
TASK_HEADS: Registry[Callable[[int, int], nn.Module | None]] = Registry("P-tuning v2 task")
TASK_HEADS.add("generation", lambda width, num_classes: None)
TASK_HEADS.add("classification", ClassificationHead)


@dataclass
class PTuningV2Config:
    num_virtual_tokens: int = 20  # P, prompt length at every layer
    init_std: float = 0.02  # standard deviation of the initial keys and values
    task: str = "generation"  # generation | classification (adds a linear head)
    num_classes: int = 0  # classes of the head (task = classification)

    def validate(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(
                f"ptuning2.num_virtual_tokens must be positive, got {self.num_virtual_tokens}"
            )
        if self.init_std <= 0:
            raise ConfigError(f"ptuning2.init_std must be positive, got {self.init_std}")
        if self.task not in TASK_HEADS:
            raise ConfigError(
                f"ptuning2.task {self.task!r} is unknown; choose from {TASK_HEADS.names()}"
            )
        if self.task == "classification" and self.num_classes < 2:
            raise ConfigError(
                f"ptuning2.task='classification' needs num_classes >= 2, got {self.num_classes}"
            )


@register
class PTuningV2(VirtualTokenMethod):
    """Deep prompts (per-layer key/value prefixes) trained directly, with an optional head."""

    name = "ptuning2"
    Config = PTuningV2Config

    def build_wrapper(self, model: nn.Module, geometry: Geometry) -> VirtualTokenModel:
        c = self.config
        device, dtype = float_placement(model.get_input_embeddings())
        with torch.device(device):
            encoder = PromptEncoder(
                c.init_std * torch.randn(c.num_virtual_tokens, geometry.kv_width)
            )
            head = TASK_HEADS.get(c.task)(geometry.width, c.num_classes)
        head = head.to(dtype) if head is not None else None
        insertion = PrefixCache(geometry, c.num_virtual_tokens)
        return VirtualTokenModel(model, encoder.to(dtype), insertion, head)
