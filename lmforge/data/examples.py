"""Batches of whole examples (one prompt per row) for fine-tuning, resumable exactly.

Rows are left-padded, so every prompt ends in the last column, where a classifier reads
the first token of each label word and from where its KV cache continues with the rest
(train/objectives.py); positions count real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmforge.data.loader import Batch, rank_rows
from lmforge.errors import DataError
from lmforge.model.continuations import left_pad


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int) -> Batch:
    """(token ids, class id) rows → left-padded input_ids/attention_mask (B, T), class_ids (B,)."""
    input_ids, mask = left_pad([ids for ids, _ in rows], pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
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
