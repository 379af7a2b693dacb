"""What differs between a native CausalLM and a transformers model for virtual tokens:
how a prefilled KV cache is made, the context length, where the final norm sits.
A `Backend` per kind, chosen by `backend_for(model)` from the BACKENDS registry."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.attention import KVCache
from lmforge.model.gpt import CausalLM
from lmforge.registry import Registry

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len")


@dataclass(frozen=True)
class Geometry:
    """The shapes virtual tokens must fit."""

    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    width: int  # embedding width d
    context: int  # longest sequence the model reads

    @property
    def kv_width(self) -> int:
        """Features of one virtual token's keys and values over all layers."""
        return self.n_layer * 2 * self.n_kv_head * self.head_dim


# ───────────────────────────────────────────────────────────────────────── backends


class Backend(Protocol):
    def accepts(self, model: nn.Module) -> bool: ...
    def geometry(self, model: nn.Module) -> Geometry: ...
    def prefilled_cache(
        self, model: nn.Module, cache: Any, keys: Tensor, values: Tensor, capacity: int
    ) -> Any: ...
    def with_context(self, config: Any, shorter_by: int) -> Any: ...


class NativeBackend:
    """lmforge's CausalLM: a preallocated KVCache, the context in config.max_seq_len."""

    def accepts(self, model: nn.Module) -> bool:
        return isinstance(model, CausalLM)

    def geometry(self, model: nn.Module) -> Geometry:
        c = model.config
        return Geometry(c.n_layer, c.n_head, c.n_kv_head, c.head_dim, c.d_model, c.max_seq_len)

    def prefilled_cache(
        self, model: nn.Module, cache: KVCache | None, keys: Tensor, values: Tensor, capacity: int
    ) -> KVCache:
        """keys/values (L, B, n_kv, P, hd) written as the first P positions of every layer."""
        L, B, _, P, _ = keys.shape
        if cache is None:
            cache = KVCache.allocate(model.config, B, capacity, keys.dtype, keys.device)
        for layer in range(L):
            cache.update(layer, keys[layer], values[layer])
        cache.advance(P)
        return cache

    def with_context(self, config: Any, shorter_by: int) -> Any:
        return config.replace(max_seq_len=config.max_seq_len - shorter_by)


class TransformersBackend:
    """A transformers PreTrainedModel (Llama family): a DynamicCache filled layer by layer."""

    def accepts(self, model: nn.Module) -> bool:
        try:
            from transformers import PreTrainedModel
        except ImportError:
            return False
        return isinstance(model, PreTrainedModel)

    def geometry(self, model: nn.Module) -> Geometry:
        c = model.config
        n_head = c.num_attention_heads
        n_kv = getattr(c, "num_key_value_heads", None) or n_head
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
        context = next((getattr(c, n) for n in CONTEXT_FIELDS if getattr(c, n, None)), None)
        if not isinstance(context, int):
            raise ConfigError(
                f"cannot tell the context length of {type(model).__name__}: its config has "
                f"none of {', '.join(CONTEXT_FIELDS)}; set one of them"
            )
        return Geometry(c.num_hidden_layers, n_head, n_kv, head_dim, c.hidden_size, context)

    def prefilled_cache(
        self, model: nn.Module, cache: Any, keys: Tensor, values: Tensor, capacity: int
    ) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config) if cache is None else cache
        for layer in range(keys.shape[0]):
            cache.update(keys[layer], values[layer], layer)
        return cache

    def with_context(self, config: Any, shorter_by: int) -> Any:
        config = copy.copy(config)
        for name in CONTEXT_FIELDS:
            if isinstance(getattr(config, name, None), int):
                setattr(config, name, getattr(config, name) - shorter_by)
        return config


BACKENDS: Registry[Backend] = Registry("model backend")
BACKENDS.add("native", NativeBackend())
BACKENDS.add("transformers", TransformersBackend())


def backend_for(model: nn.Module) -> Backend:
    for name in BACKENDS:
        if BACKENDS.get(name).accepts(model):
            return BACKENDS.get(name)
    raise ConfigError(
        f"{type(model).__name__} is neither an lmforge CausalLM nor a transformers "
        "PreTrainedModel; virtual-token methods wrap one of those"
    )


def cache_arg(model: nn.Module) -> str:
    """How `model` names its cache argument (transformers 5 renamed it to `cache`)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_length(cache: Any) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def final_norm(model: nn.Module) -> nn.Module:
    """The last normalisation (`model.norm`, in both backends): its output is the final
    hidden state. (gpt.py has no output_hidden_states yet; a forward hook reads it.)"""
    norm = getattr(getattr(model, "model", None), "norm", None)
    if not isinstance(norm, nn.Module):
        raise ConfigError(
            f"{type(model).__name__} has no model.norm (the Llama family's final norm); "
            "a classification head needs the final hidden state"
        )
    return norm


# ─────────────────────────────────────────────────────────────────── prompt encoder
