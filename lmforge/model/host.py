"""What a component needs to know about a model beyond the common call convention.

Every model is called the same way (`model(input_ids, attention_mask=..., ...)`), but a few
things still differ between a native `CausalLM` and a transformers causal LM: who makes the
KV cache and how it travels through the call, how finished rows leave it, where the context
length and the shapes are written, how gradient checkpointing is switched on. `ModelHost` is
that difference, with exactly two implementations, chosen once by `host_for(model)`:

    host_for(model) ─┬─► NativeHost        (lmforge CausalLM: the cache its mixer needs)
                     └─► TransformersHost  (PreTrainedModel: transformers' own Cache)

A wrapper that reads virtual tokens (peft/virtual) is hosted as the model in its
`base_model`: calls go through the wrapper (`host.model`), questions about shapes and
modules go to the model underneath (`host.plain`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.gpt import CausalLM
from lmforge.model.prefill import packs, prefill_packed

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len")


@dataclass(frozen=True)
class Geometry:
    """The shapes of a decoder (what virtual tokens and caches must fit)."""

    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    width: int  # embedding width d
    context: int  # longest sequence the model reads

    @property
    def kv_width(self) -> int:
        """Features of one token's keys and values over all layers."""
        return self.n_layer * 2 * self.n_kv_head * self.head_dim


def float_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and the floating dtype a layer or model computes in. A layer that stores its
    weight in another format (4-bit codes, 16-bit storage widened on use) says so with a
    `compute_dtype`; that counts, not its storage."""
    tensors = list(module.parameters()) + list(module.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    stored = {
        id(m.weight)
        for m in module.modules()
        if hasattr(m, "compute_dtype") and isinstance(getattr(m, "weight", None), Tensor)
    }
    floats = [t.dtype for t in tensors if t.is_floating_point() and id(t) not in stored]
    dtype = getattr(module, "compute_dtype", None) or (floats[0] if floats else torch.float32)
    return device, dtype


class ModelHost(Protocol):
    """The model-kind-specific part of running, caching and reshaping a causal LM."""

    model: nn.Module  # what is called: the model, or a wrapper around it
    plain: nn.Module  # the native CausalLM or transformers model underneath
    cache_arg: str  # the name of the cache argument and output field
    slices_logits: bool  # calls accept logits_to_keep and return the last positions as they are

    def max_length(self) -> int:
        """Longest sequence (prompt + generated tokens) the called model can read."""
        ...

    def geometry(self) -> Geometry: ...

    def with_context(self, shorter_by: int) -> Any:
        """A copy of the plain model's config whose context is `shorter_by` tokens shorter."""
        ...

    def final_norm(self) -> nn.Module:
        """The last normalisation: its output is the final hidden state."""
        ...

    def blocks(self) -> nn.ModuleList: ...

    def embeddings(self) -> nn.Embedding: ...

    def head(self) -> nn.Module:
        """The output projection (hidden state → logits), at `lm_head` in both kinds."""
        ...

    def set_gradient_checkpointing(self, enabled: bool) -> None: ...

    def new_cache(self, batch: int, capacity: int) -> Any:
        """An empty cache for `batch` rows of `capacity` tokens (None: the model makes one)."""
        ...

    def prefilled_cache(self, cache: Any, keys: Tensor, values: Tensor, capacity: int) -> Any:
        """keys/values (L, B, n_kv, P, hd) written as the first P positions of every layer."""
        ...

    def cache_length(self, cache: Any) -> int: ...

    def step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        """Run the new tokens (B, T) after the cached ones; return last logits (B, V), cache."""
        ...

    def extend(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any, keep=0
    ) -> tuple[Tensor, Any]:
        """Run the new tokens (B, T) after the cached ones; return the logits of every new
        position, or of the last `keep` when keep > 0, (B, T|keep, V), and the cache
        (gradients flow through it when enabled)."""
        ...

    def select_rows(self, cache: Any, rows: Tensor) -> Any:
        """The batch rows `rows` of the cache, in that order: finished sequences leave, a row
        named twice is repeated (one prompt, several continuations)."""
        ...


class _Layout:
    """Where both kinds keep their modules (transformers' Llama layout, which native models
    share): `model.layers`, `model.norm`, `get_input_embeddings()`."""

    def __init__(self, model: nn.Module, plain: nn.Module | None = None) -> None:
        self.model, self.plain = model, model if plain is None else plain

    def final_norm(self) -> nn.Module:
        norm = getattr(getattr(self.plain, "model", None), "norm", None)
        if not isinstance(norm, nn.Module):
            raise ConfigError(
                f"{type(self.plain).__name__} has no model.norm (the Llama family's final "
                "norm), which reading the final hidden state needs"
            )
        return norm

    def blocks(self) -> nn.ModuleList:
        return self.plain.model.layers

    def embeddings(self) -> nn.Embedding:
        return self.plain.get_input_embeddings()

    def head(self) -> nn.Module:
        return self.plain.lm_head

    def cache_length(self, cache: Any) -> int:
        return 0 if cache is None else int(cache.get_seq_length())


class NativeHost(_Layout):
    """lmforge's CausalLM: the cache comes from the model (`CausalLM.new_cache`: KV buffers
    allocated up front and filled in place for attention, a fixed-size state for retention);
    every kind answers update / advance / select / get_seq_length / length / packs."""

    cache_arg = "past_key_values"

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        return isinstance(model, CausalLM)

    @property
    def slices_logits(self) -> bool:
        return self.model is self.plain

    def max_length(self) -> int:
        return self.model.config.max_seq_len

    def geometry(self) -> Geometry:
        c = self.plain.config
        return Geometry(c.n_layer, c.n_head, c.n_kv_head, c.head_dim, c.d_model, c.max_seq_len)

    def with_context(self, shorter_by: int) -> Any:
        config = self.plain.config
        return config.replace(max_seq_len=config.max_seq_len - shorter_by)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.plain.gradient_checkpointing = enabled

    def new_cache(self, batch: int, capacity: int) -> Any:
        device, dtype = float_placement(self.plain)
        return self.plain.new_cache(batch, capacity, dtype, device)

    def prefilled_cache(self, cache: Any, keys: Tensor, values: Tensor, capacity: int) -> Any:
        L, B, _, P, _ = keys.shape
        if cache is None:
            cache = self.plain.new_cache(B, capacity, keys.dtype, keys.device)
        for layer in range(L):
            cache.update(layer, keys[layer], values[layer])
        cache.advance(P)
        return cache

    def step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        if self.model is self.plain and packs(input_ids, attention_mask, cache, self.max_length()):
            return prefill_packed(self.model, input_ids, attention_mask, cache)
        logits, cache = self.extend(input_ids, attention_mask, position_ids, cache, keep=1)
        return logits[:, -1], cache  # the prefill needs only the last position's logits

    def extend(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: Any,
        keep=0,
    ) -> tuple[Tensor, Any]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        return out.logits, out.past_key_values

    def select_rows(self, cache: Any, rows: Tensor) -> Any:
        cache.select(rows)
        return cache


class TransformersHost(_Layout):
    """A transformers PreTrainedModel: it creates and grows its own Cache object.

    transformers 5.x renames the `past_key_values` argument and output field to `cache`;
    both spellings are handled here so that callers never see the difference.
    """

    def __init__(self, model: nn.Module, plain: nn.Module | None = None) -> None:
        super().__init__(model, plain)
        self.cache_arg = _cache_arg(self.plain)
        self._step_arg = _cache_arg(self.model)  # a wrapper keeps the older spelling
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        try:  # imported only when asked: loading a native model never imports transformers
            from transformers import PreTrainedModel
        except ImportError:
            return False
        return isinstance(model, PreTrainedModel)

    @property
    def slices_logits(self) -> bool:
        return self.model is self.plain and self._keeps_logits

    def max_length(self) -> int:
        return _context(self.model.config, type(self.plain).__name__)

    def geometry(self) -> Geometry:
        c = self.plain.config
        n_head = c.num_attention_heads
        n_kv = getattr(c, "num_key_value_heads", None) or n_head
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
        context = _context(c, type(self.plain).__name__)
        return Geometry(c.num_hidden_layers, n_head, n_kv, head_dim, c.hidden_size, context)

    def with_context(self, shorter_by: int) -> Any:
        config = copy.copy(self.plain.config)
        for name in CONTEXT_FIELDS:
            if isinstance(getattr(config, name, None), int):
                setattr(config, name, getattr(config, name) - shorter_by)
        return config

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if not getattr(self.plain, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"{type(self.plain).__name__} supports no gradient checkpointing",
                fix="set {gradient_checkpointing=false}",
            )
        model, kwargs = self.plain, {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            if enabled:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.activation_checkpointing_disable()
        elif enabled:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_disable()

    def new_cache(self, batch: int, capacity: int) -> None:
        return None

    def prefilled_cache(self, cache: Any, keys: Tensor, values: Tensor, capacity: int) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.plain.config) if cache is None else cache
        for layer in range(keys.shape[0]):
            cache.update(keys[layer], values[layer], layer)
        return cache

    def step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
    ) -> tuple[Tensor, Any]:
        keep = int(self._keeps_logits)  # the prefill needs only the last position's logits
        logits, cache = self.extend(input_ids, attention_mask, position_ids, cache, keep)
        return logits[:, -1], cache

    def extend(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any, keep=0
    ) -> tuple[Tensor, Any]:
        kwargs = {self._step_arg: cache, **({"logits_to_keep": keep} if keep else {})}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        return out.logits, _returned_cache(out)

    def select_rows(self, cache: Any, rows: Tensor) -> Any:
        cache.batch_select_indices(rows)
        return cache


def _returned_cache(out: Any) -> Any:
    """The output's cache under either name (None when the model kept none)."""
    name = "cache" if hasattr(out, "cache") else "past_key_values"
    return getattr(out, name, None)


def _cache_arg(model: nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _context(config: Any, owner: str) -> int:
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(
        f"cannot tell the context length of {owner}: its config has none of "
        f"{', '.join(CONTEXT_FIELDS)}; set one of them"
    )


HOSTS: tuple[type[NativeHost] | type[TransformersHost], ...] = (NativeHost, TransformersHost)


def find_host(model: nn.Module) -> ModelHost | None:
    """The host that knows how to drive `model` (native CausalLM or transformers model, or a
    wrapper around one in its `base_model`); None for any other model."""
    plain = model
    while True:
        for host in HOSTS:
            if host.accepts(plain):
                return host(model, plain)
        inner = getattr(plain, "base_model", None)
        if not isinstance(inner, nn.Module) or inner is plain:
            return None
        plain = inner


def host_for(model: nn.Module) -> ModelHost:
    """find_host, for a model that must be one of the two kinds."""
    host = find_host(model)
    if host is None:
        raise ConfigError(
            f"{type(model).__name__} is neither an lmforge CausalLM nor a transformers "
            "PreTrainedModel (nor a wrapper around one in its base_model)"
        )
    return host


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Recompute each block's activations during backward instead of keeping them: activation
    memory drops from every intermediate of every layer to one (B, T, d) tensor per layer,
    for about one more forward pass of compute."""
    try:
        host = host_for(model)
    except ConfigError as e:
        raise ConfigError(str(e), fix="set {gradient_checkpointing=false}") from None
    host.set_gradient_checkpointing(enabled)
