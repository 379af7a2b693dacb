"""Grouped-query self-attention with rotary positions and a preallocated KV cache.

    x ─► q_proj ─► RoPE ─┐
    x ─► k_proj ─► RoPE ─┼─► cache ─► softmax(q·kᵀ/√d + mask)·v ─► o_proj
    x ─► v_proj ─────────┘

Grouped-query attention (Ainslie et al., 2023): n_kv_head key/value heads are
shared by groups of n_head / n_kv_head query heads. RoPE (Su et al., 2021)
rotates each (x_i, x_{i+d/2}) pair of a head by angle pos·θ^(-2i/d), the
"rotate half" layout that transformers' Llama checkpoints use.

The projections are SplitLinear: an nn.Linear that runs products over a few rows (one
new token per sequence while generating) on every thread; see `split_linear`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.registry import Registry

if TYPE_CHECKING:  # model/config.py checks `attention` against this module's registry
    from lmforge.model.config import ModelConfig

# An attention kernel: (q, k, v, mask, dropout_p, is_causal) -> out; q (B,nh,T,hd), k/v (B,nkv,S,hd)
AttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor | None, float, bool], Tensor]
ATTENTION: Registry[AttentionFn] = Registry("attention kernel")


@ATTENTION.register("sdpa")
def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, is_causal: bool
) -> Tensor:
    """torch's fused scaled_dot_product_attention (flash / memory-efficient kernels)."""
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal, enable_gqa=gqa
    )


@ATTENTION.register("naive")
def naive_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float, is_causal: bool
) -> Tensor:
    """The textbook formula, materialising the (T, S) score matrix; the reference."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, nh, S, hd)
    v = v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
    weights = F.dropout(scores.softmax(dim=-1), p=p)
    return weights @ v  # (B, nh, T, hd)


def packed_attention_mask(segment_ids: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """(B, T) segment ids → a (B, 1, T, T) mask, causal within a segment, closed across.

    Boolean (True = may attend) by default, the form the native model and SDPA take; with a
    float `dtype`, additive (0 or the dtype's minimum) for attention that adds the mask.
    Padding (segment 0) attends causally to padding only, so every query sees some key.
    """
    T = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    allowed = (same & causal)[:, None]  # (B, 1, T, T)
    if dtype is None:
        return allowed
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)


def weight_blocks(weight: Tensor, splits: int) -> Tensor:
    """W (N, K) as `splits` blocks of rows, transposed for a batched product: (s, K, N/s)."""
    N, K = weight.shape
    return weight.view(splits, N // splits, K).transpose(1, 2)  # a view


def split_linear(x: Tensor, weight: Tensor, bias: Tensor | None, splits: int) -> Tensor:
    """F.linear(x, weight, bias) with W's rows cut into `splits` blocks, one per thread.

    For a few rows of x (one new token per sequence while generating), MKL runs the
    product as a matrix-vector product on one thread, which reads W at about half the
    memory bandwidth. The blocks of one batched matmul run on different threads: each
    output is still the same dot product (bit for bit with MKL's F.linear), and a decode
    step of SmolLM2 gets ~1.5x faster.
    """
    return blocks_linear(x, weight_blocks(weight, splits), bias)


def blocks_linear(x: Tensor, blocks: Tensor, bias: Tensor | None) -> Tensor:
    """`split_linear` with the blocks (s, K, N/s) already cut."""
    splits, K, n = blocks.shape
    N = splits * n
    rows = x.reshape(-1, K).expand(splits, -1, -1)  # (s, M, K): a view
    if bias is None:  # bmm itself: matmul would reach the same kernel through more dispatch
        y = torch.bmm(rows, blocks)  # (s, M, N/s): the rows meet every block
    else:  # bias inside the product, as F.linear's addmm adds it (same rounding)
        y = torch.baddbmm(bias.view(splits, 1, -1), rows, blocks)
    return y.transpose(0, 1).reshape(*x.shape[:-1], N)  # (..., N)


class SplitLinear(nn.Linear):
    """nn.Linear (same parameters, same state dict) that takes `split_linear` for few rows."""

    split_rows = 16  # at most this many rows (batch × new tokens) take the split path
    block_numel = 1 << 19  # blocks of at most this many weights: a large head runs ~1.4x faster

    _blocks: tuple[tuple[int, int], Tensor] | None = None  # (weight's address, threads), view

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() <= self.split_rows * self.in_features:
            blocks = self.blocks()
            if blocks.shape[0] > 1:
                return blocks_linear(x, blocks, self.bias)
        return F.linear(x, self.weight, self.bias)

    def blocks(self) -> Tensor:
        """The weight's blocks for this thread count, cut once (a view: in-place updates of the
        weight show through; a replaced weight has another address and is cut again). While
        the weight needs a gradient the view is cut afresh, so autograd records it."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return weight_blocks(self.weight, self.splits())
        key = (self.weight.data_ptr(), torch.get_num_threads())
        if self._blocks is None or self._blocks[0] != key:
            self._blocks = (key, weight_blocks(self.weight, self.splits()))
        return self._blocks[1]

    def splits(self) -> int:
        """One block per thread, twice as many while blocks are too large; a divisor of N."""
        splits = torch.get_num_threads()
        while self.weight.numel() > splits * self.block_numel:
            splits *= 2
        return math.gcd(self.out_features, splits)


def with_split_linears(module: nn.Module) -> nn.Module:
    """Swap every plain nn.Linear inside `module` for a SplitLinear sharing its parameters."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                new = SplitLinear(child.in_features, child.out_features, bias=False, device="meta")
                new.weight, new.bias = child.weight, child.bias
                setattr(parent, name, new)
    return module


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # Computed exactly as transformers does, so imported checkpoints match bit for bit.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        inv_freq = 1.0 / (theta**exponents)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and *signed* sin tables (B, 1, T, hd) for `apply_rope`, shared by all layers.

        rotate_half(x)·sin = roll(x)·[-sin₁, sin₂]: with the sign folded into the table
        once per forward, each layer rotates q and k in 4 tensor ops instead of 9."""
        angles = position_ids[:, None, :, None].float() * self.inv_freq  # (B, 1, T, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, 1, T, hd)
        cos, sin = angles.cos(), angles.sin()
        half = sin.shape[-1] // 2
        signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        return cos.to(dtype), signed_sin.to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, h, T, hd); cos and signed sin (B, 1, T, hd) from RotaryEmbedding.

    The "rotate half" rotation x·cos + [-x₂, x₁]·sin, written as x·cos + [x₂, x₁]·[-sin₁, sin₂]
    (the same products, bit for bit)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class KVCache:
    """Keys and values of every layer in buffers (B, n_kv, capacity, hd), filled in place.

    Layers write the new positions at `length`; the model advances `length` once
    all layers have run. Capacity doubles if a forward call outgrows it, but
    `allocate` with the final length avoids any copy during generation.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (batch, n_kv_head, capacity, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        batch: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        return cls(
            config.n_layer, batch, config.n_kv_head, config.head_dim, capacity, dtype, device
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def get_seq_length(self) -> int:
        return self.length

    def _grow(self, needed: int) -> None:
        new = max(needed, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, buf in enumerate(store):
                bigger = buf.new_empty(*buf.shape[:2], new, buf.shape[3])
                bigger[:, :, : self.length] = buf[:, :, : self.length]
                store[i] = bigger

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v (B, n_kv, T, hd) after the cached positions; return all positions so far."""
        T = k.shape[2]
        if self.length + T > self.capacity:
            self._grow(self.length + T)
        keys, values = self.keys[layer], self.values[layer]
        keys.narrow(2, self.length, T).copy_(k)
        values.narrow(2, self.length, T).copy_(v)
        return keys.narrow(2, 0, self.length + T), values.narrow(2, 0, self.length + T)

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: Tensor) -> None:
        """Keep only the batch rows `rows` (finished sequences leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


class PagedCache(Protocol):
    """A cache that runs attention itself over blocks of keys/values (model/paged.py)."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, kernel: AttentionFn) -> Tensor:
        """q (1, nh, N, hd), k/v (1, nkv, N, hd) of a step's new tokens → (1, nh, N, hd)."""
        ...


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = SplitLinear(config.d_model, self.n_head * self.head_dim, bias=bias)
        self.k_proj = SplitLinear(config.d_model, self.n_kv_head * self.head_dim, bias=bias)
        self.v_proj = SplitLinear(config.d_model, self.n_kv_head * self.head_dim, bias=bias)
        self.o_proj = SplitLinear(self.n_head * self.head_dim, config.d_model, bias=False)
        self.dropout = config.dropout
        self.kernel = ATTENTION.get(config.attention)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | PagedCache | None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B,nh,T,hd)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B,nkv,T,hd)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and not isinstance(cache, KVCache):  # a paged step (model/paged.py)
            y = cache.attend(self.layer_idx, q, k, v, self.kernel)  # (1, nh, N, hd)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, past+T, hd)
        # Without a mask, a fresh sequence is plainly causal; one new token sees everything.
        is_causal = mask is None and past == 0 and T > 1
        if mask is None and past > 0 and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        p = self.dropout if self.training else 0.0
        y = self.kernel(q, k, v, mask, p, is_causal)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
