"""A paged KV cache: keys and values in fixed-size blocks, read through block tables.

    pool (per layer): keys, values  (num_blocks, block_size, n_kv, hd)
    sequence s: block table [7, 2, 9]  →  positions 0..15 in block 7, 16..31 in 2, 32.. in 9

A decoding step runs every sequence's new tokens as ONE flat row of N tokens (a decode
contributes 1, a prefill chunk many), so each weight matrix is read once per step for the
whole batch. Attention alone is per sequence: `PagedBatch.attend` writes the new keys and
values into their slots and reads each sequence's keys through its table.

    new tokens (1, N) ─► projections ─► q, k, v ─► PagedBatch.attend ─► o_proj ─► ...
                                                    ├─ decodes: one padded batch (B, nkv, S, hd)
                                                    └─ prefill chunks: one call each, causal
                                                       after the cached positions

A sequence's memory is whole blocks taken from a free list and given back when it ends, so a
cache of any mix of lengths wastes at most one partial block per sequence (Kwon et al., 2023,
vLLM). Which blocks a sequence holds is the scheduler's business (serve/blocks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.model.attention import AttentionFn
from lmforge.model.gpt import CausalLM


class PagedKV:
    """The block pool of every layer: keys/values (num_blocks, block_size, n_kv, hd)."""

    def __init__(
        self,
        n_layer: int,
        num_blocks: int,
        block_size: int,
        n_kv_head: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_blocks, block_size, n_kv_head, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.block_size, self.num_blocks = block_size, num_blocks

    @classmethod
    def for_model(cls, model: CausalLM, num_blocks: int, block_size: int) -> PagedKV:
        c, weight = model.config, model.model.embed_tokens.weight  # (the head may be integer)
        return cls(
            c.n_layer, num_blocks, block_size, c.n_kv_head, c.head_dim, weight.dtype, weight.device
        )

    def write(self, table: list[int], start: int, keys: list[Tensor], values: list[Tensor]) -> None:
        """Set positions start, start+1, ... of the sequence with block table `table` to the
        given keys and values, per layer (n, n_kv, hd) (a virtual-token adapter's columns)."""
        bs, n = self.block_size, keys[0].shape[0]
        slots = [table[p // bs] * bs + p % bs for p in range(start, start + n)]
        index = torch.tensor(slots, dtype=torch.long, device=self.keys[0].device)
        for store, given in ((self.keys, keys), (self.values, values)):
            for pool, rows in zip(store, given):
                pool.view(-1, *pool.shape[2:]).index_copy_(0, index, rows.to(pool.dtype))

    @staticmethod
    def bytes_per_block(model: CausalLM, block_size: int) -> int:
        c = model.config
        itemsize = model.model.embed_tokens.weight.element_size()
        return 2 * c.n_layer * block_size * c.n_kv_head * c.head_dim * itemsize


@dataclass
class Segment:
    """One sequence's part of a step: its new tokens follow `past` cached ones."""

    table: list[int]  # block ids holding positions 0, block_size, 2·block_size, ...
    past: int  # tokens already in the cache
    new: int  # tokens run in this step (1 for a decode)


class PagedBatch:
    """A step's plan: where each new token's keys go and which keys each sequence reads.
    Passed to the model as its cache; `attend` is what Attention calls instead of `update`."""

    def __init__(self, kv: PagedKV, segments: list[Segment]) -> None:
        self.kv, self.segments = kv, segments
        bs = kv.block_size
        device = kv.keys[0].device
        slots = []
        for s in segments:
            for p in range(s.past, s.past + s.new):
                slots.append(s.table[p // bs] * bs + p % bs)
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)  # (N,)
        starts, at = [], 0
        for s in segments:
            starts.append(at)
            at += s.new
        self.starts = starts
        self.decodes = [i for i, s in enumerate(segments) if s.new == 1]
        self.prefills = [i for i, s in enumerate(segments) if s.new > 1]
        self._decode_plan = self._plan_decodes(device) if self.decodes else None

    @property
    def length(self) -> int:
        """Longest sequence after this step (what a context check compares)."""
        return max(s.past + s.new for s in self.segments)

    def positions(self) -> Tensor:
        """Each new token's position in its sequence, (N,)."""
        return torch.cat(
            [torch.arange(s.past, s.past + s.new, dtype=torch.long) for s in self.segments]
        ).to(self.slots.device)

    def _plan_decodes(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Token index, padded block tables (B, nb) and key mask (B, 1, 1, S) of the decodes."""
        segs = [self.segments[i] for i in self.decodes]
        nb = max(len(s.table[: -(-(s.past + 1) // self.kv.block_size)]) for s in segs)
        tables = torch.zeros(len(segs), nb, dtype=torch.long)
        for row, s in enumerate(segs):
            used = s.table[: -(-(s.past + 1) // self.kv.block_size)]
            tables[row, : len(used)] = torch.tensor(used)
        lengths = torch.tensor([s.past + 1 for s in segs])
        S = nb * self.kv.block_size
        mask = (torch.arange(S)[None] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
        index = torch.tensor([self.starts[i] for i in self.decodes])
        return index.to(device), tables.to(device), mask.to(device)

    def _gather(self, store: Tensor, tables: Tensor) -> Tensor:
        """Blocks (num_blocks, bs, nkv, hd) read through tables (B, nb) → (B, nkv, nb·bs, hd)."""
        B, nb = tables.shape
        blocks = store[tables]  # (B, nb, bs, nkv, hd)
        return blocks.reshape(B, nb * store.shape[1], *store.shape[2:]).transpose(1, 2)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, kernel: AttentionFn) -> Tensor:
        """q (1, nh, N, hd), k/v (1, nkv, N, hd) of the step's tokens → attention (1, nh, N, hd)."""
        keys, values = self.kv.keys[layer], self.kv.values[layer]
        flat_k, flat_v = keys.view(-1, *keys.shape[2:]), values.view(-1, *values.shape[2:])
        flat_k.index_copy_(0, self.slots, k[0].transpose(0, 1))  # (N, nkv, hd) into slots
        flat_v.index_copy_(0, self.slots, v[0].transpose(0, 1))
        out = torch.empty_like(q)
        if self._decode_plan is not None:
            index, tables, mask = self._decode_plan
            qd = q[0, :, index].transpose(0, 1).unsqueeze(2)  # (B, nh, 1, hd)
            kd, vd = self._gather(keys, tables), self._gather(values, tables)
            out[0, :, index] = kernel(qd, kd, vd, mask, 0.0, False)[:, :, 0].transpose(0, 1)
        for i in self.prefills:
            s, start = self.segments[i], self.starts[i]
            total = s.past + s.new
            table = torch.tensor(s.table[: -(-total // self.kv.block_size)], device=q.device)
            ks = self._gather(keys, table[None])[:, :, :total]  # (1, nkv, total, hd)
            vs = self._gather(values, table[None])[:, :, :total]
            qs = q[:, :, start : start + s.new]
            if s.past == 0:
                out[:, :, start : start + s.new] = kernel(qs, ks, vs, None, 0.0, True)
            else:
                causal = torch.ones(s.new, total, dtype=torch.bool, device=q.device).tril(s.past)
                out[:, :, start : start + s.new] = kernel(qs, ks, vs, causal, 0.0, False)
        return out


def paged_forward(model: CausalLM, ids: Tensor, batch: PagedBatch, keep: Tensor) -> Tensor:
    """Run a step's new tokens ids (N,) through the model on the paged cache; the logits of
    the flat positions `keep` (K,) → (K, V). The caller checks lengths against the context."""
    x = model.model.embed_tokens(ids[None])  # (1, N, d)
    cos, sin = model.model.rotary(batch.positions()[None], x.dtype)  # (1, 1, N, hd)
    for block in model.model.layers:
        x = block(x, cos, sin, None, batch)
    x = model.model.norm(x[:, keep])  # (1, K, d)
    return model.lm_head(x)[0]  # (K, V)
