"""Prompt tuning (Lester et al., 2021): s trainable "soft tokens" read before the input.

    input ids ─► embed ─► X (B, T, d)
    prompt    P (s, d) ─────────────────► [P ; X] (B, s+T, d) ─► frozen model

Only P trains; the model and its embedding table stay frozen. The paper's initialisations:

    random  uniform in [-init_range, init_range] (the paper: ±0.5)
    vocab   embeddings of tokens sampled (with `seed`) from `init_token_ids`, the k most
            frequent tokens of a corpus (the paper: 5,000) — see `frequent_token_ids`;
            an empty list samples from the whole vocabulary (peft's SAMPLE_VOCAB)
    labels  embeddings of the class-label words: each label's sub-token embeddings are
            averaged (`init_label_ids`, one id list per label), cycled to fill s
    text    embeddings of a text's tokens (`init_token_ids`), repeated then cut to s

Token ids rather than text sit in the config, so that a saved prompt reloads without its
tokenizer: `[tok.encode(w) for w in labels]` and `tok.encode(text)` give them.

At initialisation the model already attends to the prompt, so its output changes
(identity_at_init is False); "vocab", "labels" and "text" start from real embeddings, which
the paper finds trains better than "random".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import Geometry, float_placement
from lmforge.peft.base import register
from lmforge.peft.virtual import (
    InsertTokens,
    PromptEncoder,
    VirtualTokenMethod,
    VirtualTokenModel,
)
from lmforge.registry import Registry


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def frequent_token_ids(tokenizer: Encoder, texts: Iterable[str], k: int = 5000) -> list[int]:
    """The k most frequent token ids of `texts` (ties: the smaller id first)."""
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer.encode(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[:k]]


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20  # s, soft tokens read before the input
    init: str = "random"  # random | vocab | labels | text (see the module docstring)
    init_range: float = 0.5  # "random": uniform in [-init_range, init_range]
    init_token_ids: list[int] = field(default_factory=list)  # "vocab" pool / "text" tokens
    init_label_ids: list[list[int]] = field(default_factory=list)  # "labels": ids per label
    seed: int = 0  # seed of the random and vocab initialisations

    def validate(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(
                f"prompt.num_virtual_tokens must be positive, got {self.num_virtual_tokens}"
            )
        if self.init not in PROMPT_INITS:
            raise ConfigError(
                f"prompt.init {self.init!r} is unknown; choose from {PROMPT_INITS.names()}"
            )
        if self.init == "text" and not self.init_token_ids:
            raise ConfigError("prompt.init='text' needs init_token_ids (the text's token ids)")
        if self.init == "labels" and (not self.init_label_ids or not all(self.init_label_ids)):
            raise ConfigError(
                "prompt.init='labels' needs init_label_ids: one non-empty id list per label"
            )
        if self.init_range <= 0:
            raise ConfigError(f"prompt.init_range must be positive, got {self.init_range}")


# An initialisation: (config, the frozen embedding table) -> the prompt (s, d).
PROMPT_INITS: Registry[Callable[[PromptTuningConfig, nn.Embedding], Tensor]] = Registry(
    "prompt-tuning initialisation"
)


def _lookup(embed: nn.Embedding, ids: list[int]) -> Tensor:
    vocab = embed.num_embeddings
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConfigError(f"prompt init token id {bad[0]} is outside the vocabulary 0..{vocab - 1}")
    index = torch.tensor(ids, dtype=torch.long, device=embed.weight.device)
    return embed(index).detach().clone()  # (n, d)


@PROMPT_INITS.register("random")
def _random(c: PromptTuningConfig, embed: nn.Embedding) -> Tensor:
    g = torch.Generator().manual_seed(c.seed)
    rows = torch.rand(c.num_virtual_tokens, embed.embedding_dim, generator=g)  # [0, 1)
    return (2 * rows - 1) * c.init_range  # (s, d)


@PROMPT_INITS.register("vocab")
def _vocab(c: PromptTuningConfig, embed: nn.Embedding) -> Tensor:
    g = torch.Generator().manual_seed(c.seed)
    pool = c.init_token_ids or list(range(embed.num_embeddings))
    s = c.num_virtual_tokens
    if s <= len(pool):  # distinct tokens, as the paper samples s of the 5,000
        picks = torch.randperm(len(pool), generator=g)[:s]
    else:
        picks = torch.randint(len(pool), (s,), generator=g)
    return _lookup(embed, [pool[i] for i in picks.tolist()])  # (s, d)


@PROMPT_INITS.register("labels")
def _labels(c: PromptTuningConfig, embed: nn.Embedding) -> Tensor:
    labels = torch.stack([_lookup(embed, ids).mean(0) for ids in c.init_label_ids])  # (n, d)
    cycle = torch.arange(c.num_virtual_tokens) % len(labels)
    return labels[cycle]  # (s, d)


@PROMPT_INITS.register("text")
def _text(c: PromptTuningConfig, embed: nn.Embedding) -> Tensor:
    ids = c.init_token_ids
    repeated = ids * (c.num_virtual_tokens // len(ids) + 1)
    return _lookup(embed, repeated[: c.num_virtual_tokens])  # (s, d)


@register
class PromptTuning(VirtualTokenMethod):
    """s soft tokens prepended to the input embeddings; the model stays frozen."""

    name = "prompt"
    Config = PromptTuningConfig

    def build_wrapper(self, model: nn.Module, geometry: Geometry) -> VirtualTokenModel:
        embed = model.get_input_embeddings()
        device, dtype = float_placement(embed)
        init = PROMPT_INITS.get(self.config.init)(self.config, embed)
        encoder = PromptEncoder(init.to(device=device, dtype=dtype))
        return VirtualTokenModel(
            model, encoder, InsertTokens(before=self.config.num_virtual_tokens)
        )
