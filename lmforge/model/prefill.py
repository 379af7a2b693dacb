"""A left-padded batch prefill run without its padding.

Generation prefills a batch of prompts of different lengths, left-padded to the longest:

    row 0   · · a b c          packed:  a b c d e f g h      (1, N) tokens, block-diagonal
    row 1   · d e f g                   └───┘ └─────┘ └┘      mask, positions restarting
    row 2   · · · · h                   row 0  row 1  row 2   at 0 in each row

The padded call spends compute on every pad slot; the packed call does not. Each row's
keys and values are then copied into its slots of the batch cache (pad slots zeroed), so
decoding continues exactly as after the padded call, up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.model.attention import KVCache, packed_attention_mask

PACK_LIMIT = 1 << 22  # most entries of the (N, N) mask of a packed prefill (N ≤ 2,048 tokens)


def packs(ids: Tensor, mask: Tensor, cache: KVCache, context: int) -> bool:
    """Whether this call is a padded prefill that `prefill_packed` can run instead: an empty
    cache, some padding, and a packed sequence within the context and PACK_LIMIT."""
    if cache.length or ids.shape[1] == 1:
        return False
    n = int(mask.sum())
    return n < mask.numel() and n <= context and n * n <= PACK_LIMIT


def prefill_packed(
    model: nn.Module, ids: Tensor, mask: Tensor, cache: KVCache
) -> tuple[Tensor, KVCache]:
    """Prefill `cache` with the real tokens of ids (B, L) under mask (B, L); return each
    row's last logits (B, V) and the cache, advanced by L. `model` is a native CausalLM."""
    B, L = ids.shape
    keep = mask.bool()
    lengths = keep.sum(dim=1)  # (B,)
    N = int(lengths.sum())
    segments = torch.repeat_interleave(torch.arange(1, B + 1, device=ids.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths  # (B,)
    positions = torch.arange(N, device=ids.device) - starts[segments - 1]  # (N,) per row
    packed = KVCache.allocate(model.config, 1, N, cache.keys[0].dtype, ids.device)
    out = model(
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
