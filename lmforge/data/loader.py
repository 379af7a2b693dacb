"""Batches for the one training loop: packed windows of a token stream, resumable exactly.

The token stream (documents joined by eos, see shards.py) is cut into
non-overlapping windows of seq_len tokens; each epoch visits them in a fresh
permutation seeded by (seed, epoch):

    stream   │ w0 │ w1 │ w2 │ w3 │ w4 │ w5 │ w6 │ ·tail·     (tail < seq_len: never used)
    epoch 0  perm = [4 1 6 0 3 5 2]  →  batches [w4 w1] [w6 w0] [w3 w5]   (B=2; w2 waits)
    epoch 1  perm = [2 5 0 ...]      →  ...

Every batch is full (B, T), so shapes never change; the windows left over at the
end of an epoch's permutation are dropped for that epoch only. labels == input_ids
because the model shifts them internally. The position is (epoch, index) alone,
so a checkpointed `state_dict()` restores the exact batch sequence.

With several processes, B is the global batch: after `shard(rank, world)` a source serves
rank r only rows [r·B/N, (r+1)·B/N) of each batch (and reads only their windows), while its
position stays that of the global batch, so a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from lmforge.errors import CheckpointError, ConfigError, DataError

Batch = dict[str, torch.Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """What the training loop draws from; any resumable batch producer qualifies."""

    def next_batch(self) -> Batch: ...  # {"input_ids": (B, T) long, "labels": (B, T) long}

    def state_dict(self) -> dict: ...  # JSON-able exact position

    def load_state_dict(self, state: dict) -> None: ...

    # Optional, for several processes: shard(rank, world) serves that rank's rows only.


def rank_rows(batch_size: int, rank: int, world: int) -> slice:
    """The rows of a global batch that rank `rank` of `world` trains on."""
    if batch_size % world:
        near = world * max(1, round(batch_size / world))
        raise ConfigError(
            f"train.batch_size {batch_size} is the global batch and must divide among {world} "
            "processes",
            fix=f"use a multiple of {world}, e.g. {{batch_size={near}}}",
        )
    per_rank = batch_size // world
    return slice(rank * per_rank, (rank + 1) * per_rank)


class PackedBatches:
    """Endless shuffled (B, T) batches of a token array, with an exact-resume position."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        _check_shape(seq_len, batch_size)
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.num_windows = len(tokens) // seq_len
        if self.num_windows < batch_size:
            raise DataError(
                f"too little data for one batch: {len(tokens):,} tokens exist, but "
                f"batch_size {batch_size} × seq_len {seq_len} needs {batch_size * seq_len:,}",
                fix="use a larger corpus, or lower {batch_size} or {seq_len|max_length}",
            )
        self.batches_per_epoch = self.num_windows // batch_size
        self.epoch = 0
        self.index = 0  # batches already drawn in this epoch
        self.part = slice(0, batch_size)  # the rows of each batch this process trains on
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation) cache

    def shard(self, rank: int, world: int) -> None:
        """Serve rank `rank` of `world` its rows of every batch."""
        self.part = rank_rows(self.batch_size, rank, world)

    def next_batch(self) -> Batch:
        B, T = self.batch_size, self.seq_len
        windows = self._permutation()[self.index * B : (self.index + 1) * B][self.part]  # (B/N,)
        x = _gather(self.tokens, windows * T, T)  # (B/N, T)
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return _to_batch(x, self.device)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, index, seed = int(state["epoch"]), int(state["index"]), int(state["seed"])
            shape = (int(state["seq_len"]), int(state["batch_size"]))
            windows = int(state["num_windows"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"data position {state!r} is malformed ({e!r})") from None
        if shape != (self.seq_len, self.batch_size):
            raise ConfigError(
                f"the checkpoint was trained with seq_len {shape[0]}, batch_size {shape[1]}; "
                f"now {self.seq_len}, {self.batch_size}: resume with the same values"
            )
        if windows != self.num_windows:
            raise DataError(
                f"the data changed since the checkpoint: it held {windows} windows of "
                f"{self.seq_len} tokens, now {self.num_windows}; resume on the same shards"
            )
        if not 0 <= index < self.batches_per_epoch:
            raise CheckpointError(f"data position index {index} is outside the epoch")
        self.epoch, self.index, self.seed = epoch, index, seed

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def _permutation(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = (self.epoch, rng.permutation(self.num_windows))
        return self._order[1]


class ValidationBatches:
    """The first windows of a token array in order, as (≤B, T) batches; re-iterable.

    The last batch may hold fewer than B rows so that every window counts; weight
    per-batch losses by `input_ids.numel()` when averaging.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        max_batches: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        _check_shape(seq_len, batch_size)
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.device = device
        windows = len(tokens) // seq_len
        if windows == 0:
            raise DataError(
                f"too little validation data: {len(tokens):,} tokens exist, one window of "
                f"seq_len {seq_len} needs {seq_len}; raise data.val_fraction or lower seq_len"
            )
        if max_batches:  # None or 0: every window (train.eval_batches=0 means all of them)
            windows = min(windows, max_batches * batch_size)
        self.num_windows = windows

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)  # ceil

    def __iter__(self) -> Iterator[Batch]:
        T = self.seq_len
        for first in range(0, self.num_windows, self.batch_size):
            rows = np.arange(first, min(first + self.batch_size, self.num_windows))  # (≤B,)
            yield _to_batch(_gather(self.tokens, rows * T, T), self.device)

    @property
    def num_tokens(self) -> int:
        return self.num_windows * self.seq_len


def _check_shape(seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise ConfigError(f"seq_len={seq_len} and batch_size={batch_size} must both be ≥ 1")


def _gather(tokens: np.ndarray, starts: np.ndarray, T: int) -> np.ndarray:
    # Row slices of a memmap read only those pages; astype copies into owned int64 memory.
    return np.stack([tokens[s : s + T] for s in starts.tolist()]).astype(np.int64)  # (B, T)


def _to_batch(x: np.ndarray, device: str | torch.device | None) -> Batch:
    ids = torch.from_numpy(x)  # (B, T) int64
    if device is not None:
        ids = ids.to(device)
    # A copy, not an alias: objectives may mask labels in place (-100) without touching inputs.
    return {"input_ids": ids, "labels": ids.clone()}
