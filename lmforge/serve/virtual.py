"""Virtual-token adapters in the server: a KV-cache prefix of P columns per adapter.

A virtual-token method whose tokens all come before the input changes only the first P
columns of every sequence's cache:

    layer level  (prefix-tuning, P-tuning v2)   the columns ARE its trained keys and values
    input level  (prompt tuning, P-tuning v1     P rows read at positions 0..P-1; attention is
                  and prefix embedding_only       causal, so their keys and values at every
                  without a template)             layer depend on nothing after them

Either way the P columns are computed once, when the server starts, and written into the
first blocks of each of the adapter's sequences (shared between them by the prefix cache);
the prompt follows at positions P, P+1, ... as it does in `VirtualTokenModel`'s generation.
Methods that put virtual tokens between the input and the answer, or replace embeddings in
place, have no such prefix: the server refuses them and says how to serve them instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import float_placement
from lmforge.peft import METHODS
from lmforge.peft.interop import adapter_kind, load_adapter
from lmforge.peft.virtual import InsertTokens, PrefixCache, VirtualTokenMethod

PEFT_VIRTUAL = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")  # peft's virtual-token types


@dataclass
class KVPrefix:
    """An adapter's virtual columns: per layer keys and values (P, n_kv, hd)."""

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[0]


def is_virtual(path: str | Path) -> bool:
    """Whether the adapter saved at `path` (an lmforge delta, a finetune run or a peft
    directory) is a virtual-token method."""
    _, kind = adapter_kind(path)
    if kind in METHODS:
        return issubclass(METHODS.get(kind), VirtualTokenMethod)
    return kind in PEFT_VIRTUAL


def kv_prefix(model: nn.Module, path: str | Path, force: bool = False) -> KVPrefix:
    """The keys and values of the virtual columns the adapter at `path` puts before every
    prompt, computed on `model` (left as it was: the method wraps it, it is not changed)."""
    delta = load_adapter(path, model, force)
    wrapper = delta.model
    insertion = wrapper.insertion
    prefix = isinstance(insertion, PrefixCache) or (
        isinstance(insertion, InsertTokens) and insertion.between == 0 and insertion.before > 0
    )
    if not prefix:
        raise ConfigError(
            f"{path}: this {delta.name} adapter puts its virtual tokens inside the prompt, not "
            "before it, so they are no cache prefix the server can share",
            fix="serve it with `lmforge chat --adapter` or `lmforge generate --adapter`",
        )
    P = wrapper.num_virtual_tokens
    device, dtype = float_placement(model)
    cache = model.new_cache(1, P + 1, dtype, device)
    with torch.inference_mode():  # one token after the P columns fills them in the cache
        wrapper(torch.zeros(1, 1, dtype=torch.long, device=device), past_key_values=cache,
                use_cache=True)  # fmt: skip
    return KVPrefix(
        [k[0, :, :P].transpose(0, 1).clone() for k in cache.keys],
        [v[0, :, :P].transpose(0, 1).clone() for v in cache.values],
    )
