"""Batches of whole examples (one prompt per row) for fine-tuning, resumable exactly.

Rows are right-padded, so positions run 0..len-1 on every backend without position ids,
and `last` (the index of each row's final real token) is where a classifier reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmforge.data.loader import Batch, rank_rows
from lmforge.errors import DataError


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int) -> Batch:
    """(token ids, class id) rows → input_ids/attention_mask (B, T), last (B,), class_ids (B,)."""
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "last": mask.sum(1) - 1,
        "class_ids": torch.tensor([c for _, c in rows], dtype=torch.long),
    }


class ExampleBatches:
    """Endless shuffled batches of encoded examples; position (epoch, index) resumes exactly."""

    def __init__(
        self, rows: list[tuple[list[int], int]], batch_size: int, pad_id: int, seed: int = 0
    ) -> None:
        if len(rows) < batch_size:
            raise DataError(f"{len(rows)} examples cannot fill one batch of {batch_size}")
        self.rows, self.batch_size, self.pad_id, self.seed = rows, batch_size, pad_id, seed
        self.epoch, self.index = 0, 0
        self.part = slice(0, batch_size)  # the rows of each batch this process trains on

    def shard(self, rank: int, world: int) -> None:
        """Serve rank `rank` of `world` its rows of every (global) batch."""
        self.part = rank_rows(self.batch_size, rank, world)

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))

    def next_batch(self) -> Batch:
        if self.index + self.batch_size > len(self.rows):
            self.epoch, self.index = self.epoch + 1, 0
        picks = self._order()[self.index : self.index + self.batch_size][self.part]
        self.index += self.batch_size
        return collate([self.rows[i] for i in picks], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]


def fixed_batches(rows: list[tuple[list[int], int]], batch_size: int, pad_id: int) -> list[Batch]:
    """Evaluation batches in order (the last may be smaller)."""
    return [collate(rows[i : i + batch_size], pad_id) for i in range(0, len(rows), batch_size)]
