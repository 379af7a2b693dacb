"""A seeded subsample that keeps the original order (dataset files are often sorted by class)."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def seeded_sample(items: list[T], n: int, seed: int) -> list[T]:
    """At most n items, drawn with the seed and kept in their original order (0 = all)."""
    if not n or n >= len(items):
        return items
    picks = random.Random(seed).sample(range(len(items)), n)
    return [items[i] for i in sorted(picks)]
