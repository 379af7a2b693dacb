"""ModelConfig: the shape of a Llama-style decoder, plus named presets.

Two choices pick the layers of every block from registries that the model fills (gpt.py):

    model.mixer  attention (grouped-query attention, attention.py) | retention (RetNet)
    model.ffn    dense (SwiGLU, mlp.py) | moe (a mixture of SwiGLU experts, moe.py)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lmforge.config import from_dict
from lmforge.errors import ConfigError
from lmforge.model.attention import ATTENTION
from lmforge.registry import Registry


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # tokens in the vocabulary (embedding rows)
    d_model: int = 256  # width of the residual stream
    n_layer: int = 4  # number of transformer blocks
    n_head: int = 4  # query heads per attention layer
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None = n_head
    head_dim: int | None = None  # width of one head; None = d_model // n_head
    d_ff: int | None = None  # SwiGLU hidden width; None = 8/3·d_model rounded up to 32
    activation: str = "silu"  # the FFN gate's nonlinearity: silu (SwiGLU) | relu (ReGLU)
    max_seq_len: int = 256  # longest sequence the model is trained or asked to read
    rope_theta: float = 10000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # share the input embedding with the output head
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 has it)
    dropout: float = 0.0  # dropout on attention weights and residual branches
    init_std: float = 0.02  # std of the normal initialisation
    attention: str = "sdpa"  # attention kernel: sdpa | naive (see attention.py)
    mixer: str = "attention"  # token mixer of each block: attention | retention (RetNet)
    chunk_size: int = 512  # retention: longer sequences train (and prefill) chunk by chunk
    ffn: str = "dense"  # feed-forward layer of each block: dense (SwiGLU) | moe (experts)
    n_experts: int = 8  # experts per MoE layer (model.ffn=moe)
    top_k: int = 1  # experts each token is sent to (1 = Switch Transformer)
    d_ff_expert: int | None = None  # hidden width of one expert; None = d_ff
    shared_expert_d_ff: int = 0  # width of an always-on, sigmoid-gated shared expert; 0 = none
    norm_topk_prob: bool = False  # renormalise the chosen experts' probabilities to sum to 1
    expert_weights: str = "router"  # router (probabilities weight the experts) | ones (sum)
    capacity_factor: float = 1.25  # training capacity = factor · tokens · top_k / n_experts
    dropless: bool = False  # no capacity in training: every token reaches its experts
    aux_loss_weight: float = 0.01  # weight of the load-balancing loss added to the objective
    z_loss_weight: float = 0.001  # weight of the router z-loss added to the objective

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None and self.n_head > 0:
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = -(-int(8 * self.d_model / 3) // 32) * 32
        if self.d_ff_expert is None:
            self.d_ff_expert = self.d_ff

    def validate(self) -> None:
        positive = ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "head_dim", "d_ff")
        for name in (*positive, "max_seq_len", "rope_theta", "norm_eps", "init_std", "chunk_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            low = self.d_model - self.d_model % self.n_head
            near = [d for d in (low, low + self.n_head) if d > 0]
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be a multiple of model.n_head "
                f"({self.n_head}), as transformers' configs require",
                fix="e.g. " + " or ".join(f"{{d_model={d}}}" for d in near),
            )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.n_head ({self.n_head}) must be a multiple of "
                f"model.n_kv_head ({self.n_kv_head}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for RoPE, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.attention not in ATTENTION:
            raise ConfigError(
                f"model.attention {self.attention!r} is unknown; choose from {ATTENTION.names()}"
            )
        choices = [("mixer", MIXERS), ("ffn", FFNS), ("activation", GATES)]
        for name, registry in choices + [("expert_weights", WEIGHTINGS)]:
            if getattr(self, name) not in registry:
                raise ConfigError(
                    f"model.{name} {getattr(self, name)!r} is unknown; choose from "
                    f"{registry.names()}"
                )
        if self.ffn == "moe":
            self._validate_moe()

    def _validate_moe(self) -> None:
        if not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(
                f"model.top_k must be in 1..model.n_experts ({self.n_experts}), got {self.top_k}",
                fix=f"pass {{top_k=1}} to {{top_k={self.n_experts}}}",
            )
        if self.capacity_factor <= 0:
            raise ConfigError(f"model.capacity_factor must be positive, got {self.capacity_factor}")
        if self.top_k == 1 and self.norm_topk_prob and self.expert_weights == "router":
            raise ConfigError(
                "model.norm_topk_prob with model.top_k=1 weights every expert output by 1, so "
                "the router learns nothing from the loss",
                fix="set {norm_topk_prob=false} (Switch) or {top_k=2}",
            )
        for name in ("aux_loss_weight", "z_loss_weight", "shared_expert_d_ff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Mixer:
    """A token mixer: the block attribute that holds it, how to build it for layer i, and the
    cache it decodes with: cache(config, batch, capacity, dtype, device)."""

    attr: str
    build: Callable[[ModelConfig, int], nn.Module]
    cache: Callable[..., Any]


# What each name builds is registered beside the model (gpt.py, unless said).
MIXERS: Registry[Mixer] = Registry("token mixer")
FFNS: Registry[Callable[[ModelConfig, int], nn.Module]] = Registry("feed-forward layer")
WEIGHTINGS: Registry[Callable] = Registry("expert weighting")  # moe.py
GATES: Registry[Callable] = Registry("FFN activation")  # mlp.py: act(gate) · up

PRESETS: Registry[dict] = Registry("model preset")
PRESETS.add("tiny", dict(d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=128))
PRESETS.add("small", dict(d_model=192, n_layer=4, n_head=6, n_kv_head=2, max_seq_len=256))
PRESETS.add("base", dict(d_model=384, n_layer=8, n_head=6, n_kv_head=2, max_seq_len=512))
PRESETS.add("medium", dict(d_model=768, n_layer=12, n_head=12, n_kv_head=4, max_seq_len=1024))
PRESETS.add(
    "smollm2-135m",
    dict(
        vocab_size=49152,
        d_model=576,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        tie_embeddings=True,
    ),
)


def preset(name: str, **overrides: object) -> ModelConfig:
    """A named shape (`tiny`, `small`, `base`, `medium`, `smollm2-135m`) with fields overridden."""
    return from_dict(ModelConfig, {**PRESETS.get(name), **overrides}, "model")
