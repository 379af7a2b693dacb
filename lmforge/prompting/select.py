"""In-context demonstration selection: which K solved examples go before a query.

    SELECTORS ─┬─ fixed     the same K for every query: given pool indices, or a seeded draw
               ├─ random    a fresh seeded draw per query (Brown et al., 2020)
               ├─ balanced  a seeded draw per query with the labels as equal as possible
               │            (round-robin over the classes, then shuffled)
               └─ nearest   the K pool examples closest to the query in sentence-embedding
                            space, the most similar last, next to the query
                            (Liu et al., 2022, "What Makes Good In-Context Examples for GPT-3?")

Every strategy is a pure function of (pool, seed, query, query index): the same seed gives
the same demonstrations, whatever else was selected before. Random draws come from
`numpy.random.default_rng([seed, index])`, one independent stream per query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from lmforge.errors import ConfigError, DataError
from lmforge.prompting.template import Sample
from lmforge.registry import Registry

Embed = Callable[[list[str]], Tensor]  # texts → (N, D) L2-normalised embeddings


@dataclass
class SelectionConfig:
    seed: int = 0  # seeds every random draw
    text_field: str = "text"  # nearest: the field whose text is embedded
    indices: list[int] = field(default_factory=list)  # fixed: pool indices (empty = seeded draw)
    embed: Embed | None = None  # nearest: the sentence encoder (e.g. SentenceEncoder())


class Selector(Protocol):
    def select(self, query: Sample, index: int, k: int) -> list[Sample]:
        """K demonstrations for `query`, the `index`-th query of the evaluation."""
        ...


SELECTORS: Registry[Callable[[list[Sample], SelectionConfig], Selector]] = Registry(
    "demonstration selection"
)


def check_shots(k: int, pool: Sequence[Sample]) -> None:
    """ConfigError unless 0 <= k <= the number of demonstrations available."""
    if k < 0:
        raise ConfigError(f"shots must be >= 0, got {k}")
    if k > len(pool):
        raise ConfigError(
            f"shots={k} asks for more demonstrations than the pool holds ({len(pool)})",
            fix="lower {shots}, or raise {pool} if it limits the pool (0 = all of it)",
        )


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


@SELECTORS.register("fixed")
class FixedSelector:
    """The same demonstrations for every query, in the given (or drawn) order."""

    def __init__(self, pool: list[Sample], config: SelectionConfig) -> None:
        self.pool, self.config = pool, config
        bad = [i for i in config.indices if not 0 <= i < len(pool)]
        if bad:
            raise ConfigError(
                f"fixed demonstration index {bad[0]} is outside the pool 0..{len(pool) - 1}"
            )

    def select(self, query: Sample, index: int, k: int) -> list[Sample]:
        check_shots(k, self.pool)
        order = list(self.config.indices) or _rng(self.config.seed, 0).permutation(len(self.pool))
        if k > len(order):
            raise ConfigError(f"shots={k} but only {len(order)} fixed demonstration indices given")
        return [self.pool[int(i)] for i in order[:k]]


@SELECTORS.register("random")
class RandomSelector:
    """K pool examples drawn without replacement, independently for each query."""

    def __init__(self, pool: list[Sample], config: SelectionConfig) -> None:
        self.pool, self.seed = pool, config.seed

    def select(self, query: Sample, index: int, k: int) -> list[Sample]:
        check_shots(k, self.pool)
        picks = _rng(self.seed, index).choice(len(self.pool), size=k, replace=False)
        return [self.pool[int(i)] for i in picks]


@SELECTORS.register("balanced")
class BalancedSelector:
    """K examples with each label as often as possible (counts differ by at most one)."""

    def __init__(self, pool: list[Sample], config: SelectionConfig) -> None:
        self.pool, self.seed = pool, config.seed
        self.by_label: dict[str, list[int]] = {}
        for i, sample in enumerate(pool):
            self.by_label.setdefault(sample.target, []).append(i)

    def select(self, query: Sample, index: int, k: int) -> list[Sample]:
        check_shots(k, self.pool)
        rng = _rng(self.seed, index)
        labels = sorted(self.by_label)
        queues = {label: list(rng.permutation(self.by_label[label])) for label in labels}
        order = [labels[int(i)] for i in rng.permutation(len(labels))]  # who goes first
        picks: list[int] = []
        while len(picks) < k:  # one round over the labels that still have examples
            for label in order:
                if queues[label] and len(picks) < k:
                    picks.append(int(queues[label].pop(0)))
        return [self.pool[picks[int(i)]] for i in rng.permutation(len(picks))]


@SELECTORS.register("nearest")
class NearestSelector:
    """The K most similar pool examples by cosine similarity of sentence embeddings.

    Ties go to the lower pool index. A pool example whose text equals the query's is
    skipped, so evaluating on the pool itself never shows the model its own answer."""

    def __init__(self, pool: list[Sample], config: SelectionConfig) -> None:
        if config.embed is None:
            raise ConfigError(
                "nearest-neighbour selection needs an encoder (SelectionConfig.embed)"
            )
        self.pool, self.field, self.embed = pool, config.text_field, config.embed
        texts = [self._text(s, f"pool example {i}") for i, s in enumerate(pool)]
        self.keys = self.embed(texts) if texts else torch.zeros(0, 1)  # (N, D)

    def _text(self, sample: Sample, where: str) -> str:
        if self.field not in sample.fields:
            raise DataError(f"{where} ({sample.origin}) has no field {self.field!r} to embed")
        return sample.fields[self.field]

    def select(self, query: Sample, index: int, k: int) -> list[Sample]:
        check_shots(k, self.pool)
        text = self._text(query, "the query")
        similarity = self.keys @ self.embed([text])[0]  # (N,)
        order = torch.argsort(-similarity, stable=True).tolist()
        picks = [i for i in order if self.pool[i].fields[self.field] != text][:k]
        if len(picks) < k:
            raise ConfigError(
                f"shots={k} but only {len(picks)} pool examples differ from the query"
            )
        return [self.pool[i] for i in reversed(picks)]  # most similar last


def make_selector(name: str, pool: list[Sample], config: SelectionConfig | None = None) -> Selector:
    """A registered selection strategy over `pool` (RegistryError lists the strategies)."""
    return SELECTORS.get(name)(pool, config or SelectionConfig())
