"""What a component needs to know about a model beyond the common call convention.

Every model is called the same way (`model(input_ids, attention_mask=..., ...)`), but a
few things still differ between a native `CausalLM` and a `transformers` causal LM: who
makes the KV cache, how it travels in and out of the call, how finished rows leave it,
and where the context length is written. `ModelHost` is that small difference, with
exactly two implementations, chosen once by `host_for(model)`:

    host_for(model) ─┬─► NativeHost        (lmforge CausalLM: preallocated KVCache)
                     └─► TransformersHost  (PreTrainedModel: transformers' own Cache)
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.attention import KVCache, packed_attention_mask
from lmforge.model.gpt import CausalLM


class ModelHost(Protocol):
    """The backend-specific part of running a causal LM step by step."""

    model: nn.Module

    def max_length(self) -> int:
        """Longest sequence (prompt + generated tokens) the model can read."""
        ...

    def new_cache(self, batch: int, capacity: int) -> Any:
        """An empty cache for `batch` rows of `capacity` tokens (None: the model makes one)."""
        ...

    def step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        """Run the new tokens (B, T) after the cached ones; return last logits (B, V), cache."""
        ...

    def select_rows(self, cache: Any, rows: Tensor) -> Any:
        """Keep only the batch rows `rows` of the cache (finished sequences leave)."""
        ...


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model computes, and in what dtype (its KV cache's)."""
    from lmforge.peft.inject import float_placement

    return float_placement(model)


PACK_LIMIT = 1 << 22  # most entries of the (N, N) mask of a packed prefill (N ≤ 2,048 tokens)


class NativeHost:
    """lmforge's CausalLM: one KVCache buffer allocated up front, filled in place."""

    def __init__(self, model: CausalLM) -> None:
        self.model = model

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        return isinstance(model, CausalLM)

    def max_length(self) -> int:
        return self.model.config.max_seq_len

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        device, dtype = _device_dtype(self.model)
        return KVCache.allocate(self.model.config, batch, capacity, dtype, device)

    def step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: KVCache
    ) -> tuple[Tensor, KVCache]:
        if self._packs(input_ids, attention_mask, cache):
            return self._prefill_packed(input_ids, attention_mask, cache)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # the prefill needs only the last position's logits
        )
        return out.logits[:, -1], out.past_key_values

    def _packs(self, ids: Tensor, mask: Tensor, cache: KVCache) -> bool:
        """Whether this call is a padded prefill that `_prefill_packed` can run instead: a plain
        CausalLM (a virtual-token wrapper lays out its cache itself), some padding, and a
        packed sequence within the context and PACK_LIMIT."""
        if cache.length or ids.shape[1] == 1 or not isinstance(self.model, CausalLM):
            return False
        n = int(mask.sum())
        return n < mask.numel() and n <= self.max_length() and n * n <= PACK_LIMIT

    def _prefill_packed(self, ids: Tensor, mask: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """A left-padded prefill run without its padding, which then costs no compute (prompts
        of mixed lengths pad a batch by a third or more): the rows' real tokens are packed
        into one sequence, each attending causally within its own row (a block-diagonal mask,
        positions restarting per row). Each row's keys and values then land in its slots of
        the batch cache, its padding slots zeroed (the mask hides them; zeros keep them
        finite). The same as the padded call up to float rounding."""
        B, L = ids.shape
        keep = mask.bool()
        lengths = keep.sum(dim=1)  # (B,)
        N = int(lengths.sum())
        segments = torch.repeat_interleave(torch.arange(1, B + 1, device=ids.device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths  # (B,)
        positions = torch.arange(N, device=ids.device) - starts[segments - 1]  # (N,) per row
        packed = KVCache.allocate(self.model.config, 1, N, cache.keys[0].dtype, ids.device)
        out = self.model(
            input_ids=ids[keep][None],  # (1, N)
            attention_mask=packed_attention_mask(segments[None]),  # (1, 1, N, N)
            position_ids=positions[None],
            past_key_values=packed,
            use_cache=True,
            logits_to_keep=starts + lengths - 1,  # each row's last token
        )
        for store, filled in ((cache.keys, packed.keys), (cache.values, packed.values)):
            for buf, part in zip(store, filled):  # buf (B, nkv, cap, hd), part (1, nkv, N, hd)
                for i, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
                    buf[i, :, : L - n] = 0
                    buf[i, :, L - n : L] = part[0, :, start : start + n]
        cache.advance(L)
        return out.logits[0], cache  # (B, V)

    def select_rows(self, cache: KVCache, rows: Tensor) -> KVCache:
        cache.select(rows)
        return cache


class TransformersHost:
    """A transformers PreTrainedModel: it creates and grows its own Cache object.

    transformers 5.x renames the `past_key_values` argument and output field to `cache`;
    both spellings are handled here so that callers never see the difference.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._slice_logits = "logits_to_keep" in params

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        try:
            from transformers import PreTrainedModel
        except ImportError:  # transformers is a core dependency, but keep hosts importable
            return False
        return isinstance(model, PreTrainedModel)

    def max_length(self) -> int:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        raise ConfigError(
            f"cannot tell the context length of {type(self.model).__name__}: its config has "
            "none of max_position_embeddings, n_positions, max_seq_len; set one of them"
        )

    def new_cache(self, batch: int, capacity: int) -> None:
        return None

    def step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        kwargs: dict[str, Any] = {self._cache_arg: cache}
        if self._slice_logits:
            kwargs["logits_to_keep"] = 1  # the prefill needs only the last position's logits
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        new_cache = out["cache"] if "cache" in out else out["past_key_values"]
        return out.logits[:, -1], new_cache

    def select_rows(self, cache: Any, rows: Tensor) -> Any:
        cache.batch_select_indices(rows)
        return cache


HOSTS: tuple[type, ...] = (NativeHost, TransformersHost)


def host_for(model: nn.Module) -> ModelHost:
    """The host that knows how to drive `model` (native CausalLM or transformers model)."""
    # A delta wrapper (virtual tokens) is driven like the model it wraps; it handles the rest.
    inner = getattr(model, "base_model", None)
    base = inner if isinstance(inner, nn.Module) else model
    for host in HOSTS:
        if host.accepts(base):
            return host(model)
    raise ConfigError(
        f"{type(model).__name__} is neither an lmforge CausalLM nor a transformers "
        "PreTrainedModel; wrap it in one of those to generate with it"
    )
