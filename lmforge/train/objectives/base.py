"""The registry of training objectives (`train.objective`) and what an entry declares.

An entry is built from its options dataclass (read from `train.objective_options`, each
field checked), the model it will train (an objective may add modules to it, as the
multi-token heads do) and the tokenizer (for the ids of special tokens it needs).
`special_tokens(options)` names the tokens the tokenizer must hold before the model is
built: the pretraining recipe adds them, so their embeddings exist from the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer
from lmforge.train.state import Objective


def _no_tokens(options: Any) -> list[str]:
    return []


@dataclass
class NoOptions:
    """An objective without settings."""


@dataclass(frozen=True)
class ObjectiveKind:
    help: str  # one line for --help and the docs
    options: type  # dataclass of its train.objective_options
    build: Callable[[Any, nn.Module, Tokenizer | None], Objective]  # (options, model, tokenizer)
    special_tokens: Callable[[Any], list[str]] = _no_tokens  # tokens the tokenizer must hold


OBJECTIVES: Registry[ObjectiveKind] = Registry("objective")
