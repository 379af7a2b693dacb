"""The native decoder: embed → blocks → norm → head, Llama-style.

    tokens ─► embed_tokens ─► [ x + Attn(RMSNorm(x)) ; x + SwiGLU(RMSNorm(x)) ] × n_layer
           ─► RMSNorm ─► lm_head ─► logits

Module names follow transformers' LlamaForCausalLM (`model.layers.0.self_attn.q_proj`, ...),
so one target list serves both backends and checkpoints map one to one.
The call follows transformers' convention too:

    out = model(input_ids, attention_mask=..., position_ids=..., past_key_values=...,
                labels=..., use_cache=...)
    out.loss, out.logits, out.past_key_values
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lmforge.model.attention import (
    Attention,
    KVCache,
    PagedCache,
    RotaryEmbedding,
    SplitLinear,
    with_split_linears,
)
from lmforge.model.config import ModelConfig
from lmforge.model.loss import IGNORE_INDEX, causal_lm_loss, linear_cross_entropy
from lmforge.model.mlp import RMSNorm, SwiGLU

__all__ = ["IGNORE_INDEX", "CausalLM", "CausalLMOutput", "Trunk"]


@dataclass
class CausalLMOutput:
    loss: Tensor | None
    logits: Tensor
    past_key_values: KVCache | None = None


@dataclass
class Trunk:
    """What the blocks computed: the last hidden state and what they were given."""

    hidden: Tensor  # (B, T, d) output of the last block, before the final norm
    cos: Tensor  # (B, 1, T, hd) rotary tables
    sin: Tensor
    mask: Tensor | None  # (B, 1, T, S) boolean, or None for plain causal attention
    cache: KVCache | None


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = with_split_linears(SwiGLU(config))  # few-row products on every thread
        # Without dropout, Identity spares every decode step two dropout calls per layer.
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | PagedCache | None,
    ) -> Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Decoder(nn.Module):
    """The stack without the head (transformers' LlamaModel)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)


def _attention_mask(attention_mask: Tensor | None, T: int, past: int) -> Tensor | None:
    """Turn a (B, past+T) padding mask into a (B, 1, T, past+T) boolean causal mask.

    None when nothing is padded, so the fused causal kernel can run (a graph traced by
    torch.compile cannot branch on values: there the mask is always built). A 4-D mask
    (for example block-diagonal over packed examples) is passed through as given.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        return attention_mask
    keep = attention_mask.bool()
    if not torch.compiler.is_compiling() and bool(keep.all()):
        return None
    S = keep.shape[1]
    causal = torch.ones(T, S, dtype=torch.bool, device=keep.device).tril(past)  # (T, S)
    allowed = causal[None, None] & keep[:, None, None, :]  # (B, 1, T, S)
    # A padding query sees no key at all; let it see every key so softmax stays finite.
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def _position_ids(
    attention_mask: Tensor | None, B: int, T: int, past: int, device: torch.device
) -> Tensor:
    if attention_mask is not None and attention_mask.dim() == 2:
        # Left padding: count real tokens so each sequence starts at position 0.
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
    return torch.arange(past, past + T, device=device).expand(B, T)


class CausalLM(nn.Module):
    """Decoder plus language-model head (transformers' LlamaForCausalLM)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.fused_loss = False  # see _fuse_head_and_loss and loss_only
        self.gradient_checkpointing = False  # see set_gradient_checkpointing
        self.model = Decoder(config)
        self.lm_head = SplitLinear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)
        # Residual projections scaled by 1/√(2L) (GPT-2) keep the stream's variance steady.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int | Tensor = 0,
    ) -> CausalLMOutput:
        trunk = self.trunk(
            input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        x, cache = trunk.hidden, trunk.cache if use_cache else None
        x = self.model.norm(x)  # on every position: a wrapped norm may read the whole call
        if isinstance(logits_to_keep, Tensor):  # positions whose logits are needed, (K,)
            x = x[:, logits_to_keep]
        elif logits_to_keep:  # generation needs only the last positions' logits
            x = x[:, -logits_to_keep:]
        if labels is not None and self._fuse_head_and_loss():
            return CausalLMOutput(self.head_loss(x, labels), None, cache)
        logits = self.lm_head(x)  # (B, T, V)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(loss, logits, cache)

    def trunk(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> Trunk:
        """Embeddings through every block: the hidden state before the final norm, with the
        rotary tables and mask the blocks used (extra heads run more blocks on them)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape  # (B, T, d)
        cache = past_key_values
        if use_cache and cache is None:
            cache = KVCache.allocate(self.config, B, T, x.dtype, x.device)
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than the model's context "
                f"(max_seq_len={self.config.max_seq_len}); truncate the input"
            )
        if position_ids is None:
            position_ids = _position_ids(attention_mask, B, T, past, x.device)
        cos, sin = self.model.rotary(position_ids, x.dtype)  # (B, 1, T, hd)
        mask = _attention_mask(attention_mask, T, past)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.model.layers:
            if recompute and cache is None:  # keep only each block's input for backward
                x = checkpoint(block, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(T)
        return Trunk(x, cos, sin, mask, cache)

    def head_loss(self, normed: Tensor, labels: Tensor, shift: int = 1) -> Tensor:
        """Cross-entropy of the head over normed hidden states (B, T, d), position t predicting
        labels[t + shift]; fused with the head (no full logits) where `loss_only` allows."""
        if self._fuse_head_and_loss():
            return linear_cross_entropy(normed, self.lm_head.weight, labels, shift=shift)
        return causal_lm_loss(self.lm_head(normed), labels, shift=shift)

    def _fuse_head_and_loss(self) -> bool:
        """Inside `loss_only(model)` and with gradients on, a call with labels computes the loss
        with the head chunk by chunk and never builds the full logits (out.logits is None)."""
        head = self.lm_head
        plain = isinstance(head, nn.Linear) and head.bias is None and not head._forward_hooks
        return self.fused_loss and plain and torch.is_grad_enabled()

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per token (Kaplan et al. 2020; PaLM appendix B): 2N + 2·L·T·d_attn
        forward, three times that with the backward pass. N counts the head, not the lookup."""
        c = self.config
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * n_matmul + 2 * c.n_layer * seq_len * c.n_head * c.head_dim
        return 3 * forward if training else forward


@contextmanager
def loss_only(model: nn.Module) -> Iterator[None]:
    """Within this block, native models called with labels return only the loss and compute
    it without materialising the (B, T, V) logits (see loss.linear_cross_entropy). The
    training loop's default objective uses it; any other model passes through unchanged."""
    natives = [m for m in model.modules() if isinstance(m, CausalLM)]
    before = [m.fused_loss for m in natives]
    for m in natives:
        m.fused_loss = True
    try:
        yield
    finally:
        for m, flag in zip(natives, before):
            m.fused_loss = flag
