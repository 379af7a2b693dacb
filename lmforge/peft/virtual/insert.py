"""How virtual tokens enter a call: at the input (InsertTokens) or as a prefilled KV cache
at every layer (PrefixCache). See virtual/__init__.py for the column layout they share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from lmforge.errors import DataError
from lmforge.model.host import Geometry, float_placement
from lmforge.model.loss import IGNORE_INDEX

if TYPE_CHECKING:
    from lmforge.peft.virtual.wrapper import VirtualTokenModel


@dataclass
class Call:
    """The arguments of one forward call, in the common convention."""

    input_ids: Tensor | None = None
    inputs_embeds: Tensor | None = None
    attention_mask: Tensor | None = None
    position_ids: Tensor | None = None
    past_key_values: Any = None
    labels: Tensor | None = None
    use_cache: bool = False
    logits_to_keep: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def shape(self) -> tuple[int, int]:
        x = self.input_ids if self.input_ids is not None else self.inputs_embeds
        return x.shape[0], x.shape[1]

    def mask(self, device: torch.device) -> Tensor:
        """attention_mask as (B, T) long, ones when none was given."""
        if self.attention_mask is None:
            return torch.ones(self.shape(), dtype=torch.long, device=device)
        if self.attention_mask.dim() != 2:
            raise DataError("virtual tokens need a 2-D (B, T) attention_mask, not a 4-D one")
        return self.attention_mask.long()


def split_points(mask: Tensor, labels: Tensor | None) -> Tensor:
    """Per row, how many real tokens precede the first target (label != -100); all of them
    when there are no labels (at generation the whole prompt is input). (B,)"""
    n = mask.sum(-1)
    if labels is None:
        return n
    target = (labels != IGNORE_INDEX) & mask.bool()  # (B, T)
    first = target.long().argmax(-1, keepdim=True)  # (B, 1)
    before = mask.cumsum(-1).gather(1, first).squeeze(1) - 1
    return torch.where(target.any(-1), before, n)


def insertion_order(mask: Tensor, anchors: Tensor) -> Tensor:
    """Where each column of the extended sequence comes from. (B, P+T) indices into
    cat([virtual (P), original (T)]); virtual token i goes after `anchors[b, i]` real tokens.

    Valid columns (those of cat(ones(P), mask)) receive the stream in order; padding columns
    keep their own token, so the extended mask is unchanged by the reordering."""
    B, T = mask.shape
    P = anchors.shape[1]
    C = P + T
    valid = torch.cat([mask.new_ones(B, P), mask], 1).bool()  # (B, C)
    src = torch.arange(C, device=mask.device).expand(B, C)
    # Stream order: virtual with anchor a sorts at 2a+1, between real tokens a (2a) and a+1.
    key = torch.cat([2 * anchors + 1, 2 * mask.cumsum(-1)], 1) * C + src  # (B, C), unique
    stream = key.masked_fill(~valid, torch.iinfo(key.dtype).max).argsort(-1)  # valid first
    slot = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, C): rank among valid columns
    return torch.where(valid, stream.gather(1, slot), src)


def original_columns(order: Tensor, mask: Tensor) -> Tensor:
    """(B, T): the column whose logits belong to each original position (see docstring)."""
    B, C = order.shape
    T = mask.shape[1]
    P = C - T
    valid = torch.cat([mask.new_ones(B, P), mask], 1)  # (B, C)
    group = ((order >= P) & valid.bool()).long().cumsum(-1) * valid  # real tokens so far
    cols = torch.arange(C, device=order.device).expand(B, C)
    last = torch.zeros(B, T + 1, dtype=torch.long, device=order.device)
    last = last.scatter_reduce(1, group, cols, "amax")  # (B, T+1): last column of each group
    own = torch.arange(P, C, device=order.device).expand(B, T)
    return torch.where(mask.bool(), last.gather(1, mask.cumsum(-1)), own)


class Insertion(Protocol):
    extra: int  # columns the virtual tokens add to the sequence (and the cache)

    def prefill(
        self, model: VirtualTokenModel, rows: Tensor, call: Call
    ) -> tuple[Any, Tensor | None]: ...


@dataclass
class InsertTokens:
    """Input level: `before` rows ahead of the input, `between` rows at the split point
    (before the first target; after the prompt at generation)."""

    before: int
    between: int = 0

    @property
    def extra(self) -> int:
        return self.before + self.between

    def prefill(
        self, model: VirtualTokenModel, rows: Tensor, call: Call
    ) -> tuple[Any, Tensor | None]:
        embeds = call.inputs_embeds
        if embeds is None:
            embeds = model.get_input_embeddings()(call.input_ids)  # (B, T, d)
        B, T, d = embeds.shape
        P = self.extra
        mask = call.mask(embeds.device)
        split = split_points(mask, call.labels)[:, None]  # (B, 1)
        anchors = torch.cat([split.new_zeros(B, self.before), split.expand(B, self.between)], 1)
        order = insertion_order(mask, anchors)  # (B, P+T)
        virtual = rows.to(embeds.dtype)[None].expand(B, P, d)
        x = torch.cat([virtual, embeds], 1).gather(1, order[..., None].expand(-1, -1, d))
        extended = torch.cat([mask.new_ones(B, P), mask], 1)  # (B, P+T)
        labels = None
        if call.labels is not None:
            labels = torch.cat([call.labels.new_full((B, P), IGNORE_INDEX), call.labels], 1)
            labels = labels.gather(1, order)
        positions = None
        if call.position_ids is not None:
            start = call.position_ids.masked_fill(mask == 0, 1 << 30).amin(-1, keepdim=True)
            start = torch.where(mask.any(-1, keepdim=True), start, 0)  # (B, 1)
            positions = (extended.cumsum(-1) - 1).clamp(min=0) + start  # (B, P+T)
        new = dataclasses.replace(
            call,
            input_ids=None,
            inputs_embeds=x,
            attention_mask=None if call.attention_mask is None else extended,
            position_ids=positions,
            labels=labels,
        )
        return model.call_base(new), original_columns(order, mask)


@dataclass
class PrefixCache:
    """Layer level: per layer key/value prefixes (B, n_kv, P, hd) as a prefilled cache."""

    geometry: Geometry
    extra: int

    def prefill(
        self, model: VirtualTokenModel, rows: Tensor, call: Call
    ) -> tuple[Any, Tensor | None]:
        g, P = self.geometry, self.extra
        B, T = call.shape()
        dtype = float_placement(model.base_model)[1]
        # Feature layout (peft's): ((layer·2 + key/value)·n_kv + head)·hd + i
        kv = rows.to(dtype).view(P, g.n_layer, 2, g.n_kv_head, g.head_dim)
        kv = kv.permute(1, 2, 3, 0, 4)[:, :, None]  # (L, 2, 1, n_kv, P, hd)
        kv = kv.expand(-1, -1, B, -1, -1, -1)  # (L, 2, B, n_kv, P, hd)
        cache = model.host.prefilled_cache(call.past_key_values, kv[:, 0], kv[:, 1], P + T)
        return model.call_base(shift_for_cache(call, P, cache)), None


def shift_for_cache(call: Call, extra: int, cache: Any) -> Call:
    """The call as the base sees it when `extra` virtual columns precede it in the cache."""
    B, _ = call.shape()
    mask, positions = call.attention_mask, call.position_ids
    if mask is not None and extra:
        mask = torch.cat([mask.new_ones(B, extra), mask], 1)  # (B, extra + S)
    if positions is not None:
        positions = positions + extra
    return dataclasses.replace(
        call, attention_mask=mask, position_ids=positions, past_key_values=cache
    )
