"""Multi-scale retention (RetNet, Sun et al., 2023): trains in parallel like attention, decodes
with a fixed-size state instead of a KV cache.

Per head h with decay γ_h = 1 − 2^(−5−h), queries and keys rotated by position (RoPE, so
q_n·k_m depends on n − m), keys scaled by 1/√d:

    parallel     O = (Q Kᵀ ⊙ D) V              D[n, m] = γ^(n−m) for n ≥ m, else 0
    recurrent    S_n = γ S_{n−1} + k_nᵀ v_n     o_n = q_n S_n            (S: d × d per head)
    chunkwise    chunks of c tokens: inside a chunk the parallel form, across chunks the state
                 O_i = (Q_i K_iᵀ ⊙ D) V_i + (Q_i S_{i−1}) ⊙ ξ          ξ_j = γ^(j+1)
                 S_i = γ^c S_{i−1} + K_iᵀ (V_i ⊙ ζ)                   ζ_j = γ^(c−1−j)

The three are the same function of the sequence (tests/model/test_retention.py). Training
uses the parallel form (chunkwise past `chunk_size` tokens), the cache runs a prefill chunk by
chunk and decodes one token at a time through the recurrence: O(1) time and memory per token
whatever the context. Every head's output is normalised on its own (GroupNorm: the scale of
γ-weighted sums differs by head) and gated:

    x ─► q_proj, k_proj (RoPE) ─┐
    x ─► v_proj ────────────────┴─► retention ─► GroupNorm(heads) ─┐
    x ─► g_proj ─► swish ──────────────────────────────────────────×─► o_proj
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.attention import SplitLinear, apply_rope
from lmforge.model.config import ModelConfig


def head_decays(n_head: int) -> Tensor:
    """log γ_h = log(1 − 2^(−5−h)) for h = 0..n_head−1 (fp32)."""
    return torch.log(1 - 2.0 ** (-5 - torch.arange(n_head, dtype=torch.float32)))


def _powers(log_decay: Tensor, exponents: Tensor, dtype: torch.dtype) -> Tensor:
    """γ_h^e for every head and exponent: (h, *exponents.shape)."""
    return torch.exp(log_decay.view(-1, *[1] * exponents.dim()) * exponents).to(dtype)


def parallel_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, mask: Tensor | None = None
) -> Tensor:
    """(Q Kᵀ ⊙ D) V; q, k (B, h, T, dk), v (B, h, T, dv), a boolean mask (B, 1, T, T) or None."""
    T = q.shape[-2]
    index = torch.arange(T, device=q.device)
    distance = index[:, None] - index[None, :]  # (T, T) n − m
    decay = _powers(log_decay, distance.clamp(min=0).float(), q.dtype)  # (h, T, T)
    decay = decay.masked_fill(distance < 0, 0)
    if mask is not None:
        decay = decay * mask  # (B, h, T, T)
    return (q @ k.transpose(-2, -1) * decay) @ v  # (B, h, T, dv)


def recurrent_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One token: S ← γ S + kᵀ v, o = q S; q, k (B, h, 1, dk), v (B, h, 1, dv), S (B, h, dk, dv)."""
    state = _powers(log_decay, torch.ones(1, 1, device=q.device), state.dtype) * state
    state = state + k.transpose(-2, -1) @ v
    return q @ state, state


def chunk_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of c tokens after the state S of everything before it: (O, new S)."""
    c = q.shape[-2]
    j = torch.arange(c, device=q.device, dtype=torch.float32)
    inner = parallel_retention(q, k, v, log_decay)  # (B, h, c, dv)
    cross = (q @ state) * _powers(log_decay, j + 1, q.dtype)[..., None]  # ξ: (h, c, 1)
    zeta = _powers(log_decay, c - 1 - j, k.dtype)[..., None]  # (h, c, 1)
    carried = _powers(log_decay, torch.tensor([[float(c)]], device=q.device), state.dtype)
    state = carried * state + (k * zeta).transpose(-2, -1) @ v  # (B, h, dk, dv)
    return inner + cross, state


def chunkwise_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """The sequence chunk by chunk (the last one may be shorter): (O (B, h, T, dv), final S)."""
    outs = []
    for start in range(0, q.shape[-2], chunk):
        part = slice(start, start + chunk)
        out, state = chunk_retention(q[:, :, part], k[:, :, part], v[:, :, part], log_decay, state)
        outs.append(out)
    return torch.cat(outs, dim=2), state


class RetentionCache:
    """The decoding state of a retention model: one (B, h, dk, dv) matrix per layer, however
    long the context. Same small interface as attention's KVCache."""

    packs = False  # a state is a sum over positions: rows of a packed prefill cannot be placed

    def __init__(self, states: list[Tensor]) -> None:
        self.states = states
        self.length = 0

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        batch: int,
        capacity: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> RetentionCache:
        """Zero states; `capacity` is accepted for the common interface and needs no room."""
        shape = (batch, config.n_head, config.head_dim, config.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)])

    @property
    def dtype(self) -> torch.dtype:
        return self.states[0].dtype

    def get_seq_length(self) -> int:
        return self.length

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: Tensor) -> None:
        self.states = [s[rows] for s in self.states]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        raise ConfigError(
            "keys and values cannot be written into a retention state (model.mixer=retention "
            "has no attention); prefix methods (prefix, ptuning2) need an attention model"
        )


class MultiScaleRetention(nn.Module):
    """Gated multi-scale retention with the mixer call of attention.Attention."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx, self.chunk = layer_idx, config.chunk_size
        self.n_head, self.head_dim = config.n_head, config.head_dim
        width, bias = config.n_head * config.head_dim, config.attention_bias
        self.q_proj = SplitLinear(config.d_model, width, bias=bias)
        self.k_proj = SplitLinear(config.d_model, width, bias=bias)
        self.v_proj = SplitLinear(config.d_model, width, bias=bias)
        self.g_proj = SplitLinear(config.d_model, width, bias=False)
        self.o_proj = SplitLinear(width, config.d_model, bias=False)
        self.group_norm = nn.GroupNorm(config.n_head, width, eps=config.norm_eps)
        self.register_buffer("log_decay", head_decays(config.n_head), persistent=False)

    def heads(self, proj: nn.Module, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, h, T, hd)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: RetentionCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        q = apply_rope(self.heads(self.q_proj, x), cos, sin)
        k = apply_rope(self.heads(self.k_proj, x), cos, sin) * self.head_dim**-0.5
        v = self.heads(self.v_proj, x)
        if cache is None:
            y = self.retain(q, k, v, mask)
        else:
            if mask is not None:  # the last query sees exactly the real keys (left padding)
                k = k * mask[:, :, -1, -T:, None].to(k.dtype)  # padding adds nothing to S
            state = cache.states[self.layer_idx]
            if T == 1:
                y, state = recurrent_retention(q, k, v, self.log_decay, state)
            else:
                y, state = chunkwise_retention(q, k, v, self.log_decay, state, self.chunk)
            cache.states[self.layer_idx] = state
        y = self.group_norm(y.transpose(1, 2).reshape(B * T, -1)).view(B, T, -1)
        return self.o_proj(F.silu(self.g_proj(x)) * y)

    def retain(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Training and uncached calls: parallel, or chunkwise for long unmasked sequences."""
        if mask is not None or q.shape[-2] <= self.chunk:
            return parallel_retention(q, k, v, self.log_decay, mask)
        state = q.new_zeros(*q.shape[:2], self.head_dim, self.head_dim)
        return chunkwise_retention(q, k, v, self.log_decay, state, self.chunk)[0]
