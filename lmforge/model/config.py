"""ModelConfig: the shape of a Llama-style decoder, plus named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
    max_seq_len: int = 256  # longest sequence the model is trained or asked to read
    rope_theta: float = 10000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # share the input embedding with the output head
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 has it)
    dropout: float = 0.0  # dropout on attention weights and residual branches
    init_std: float = 0.02  # std of the normal initialisation
    attention: str = "sdpa"  # attention kernel: sdpa | naive (see attention.py)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None and self.n_head > 0:
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = -(-int(8 * self.d_model / 3) // 32) * 32

    def validate(self) -> None:
        positive = ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "head_dim", "d_ff")
        for name in (*positive, "max_seq_len", "rope_theta", "norm_eps", "init_std"):
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

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)


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
