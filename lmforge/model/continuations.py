"""Log-likelihood of several continuations after one prompt, the prompt computed once.

Every class of a classifier and every choice of a multiple-choice question is a
continuation of the same prompt x. It is scored by the log-likelihood of its whole token
sequence c = c_0 … c_{k-1}, however many tokens its words take:

    log p(c | x) = Σ_j log p(c_j | x, c_<j)

in two calls that share the prompt:

    prompts (B, T), left-padded ─► model(use_cache) ─► last column's logits: p(c_0 | x)
                                        │ KV cache, row b repeated once per continuation of b
                                        ▼
    c[:-1] (N, K-1), right-padded ─► model(cache) ─► logits: p(c_j | x, c_<j), j ≥ 1

Left padding puts every prompt's last token in the last column, so the first call keeps
one column of logits. When every continuation is one token the second call is skipped and
the first needs no cache: the cost of reading one label word's logit. A model that no host
knows, or one that drops the cache (transformers under gradient checkpointing while
training), reads each continuation's full row instead: the same numbers, the prompt
computed once per distinct row.

NORMALIZERS turn a log-likelihood into a score: the sum, the mean per token (Brown et al.,
2020) or the mean per character. They take floats or tensors alike.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model.host import ModelHost, find_host
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer

Normalizer = Callable[[Any, Any, Any], Any]  # (log-likelihood, tokens, characters) → score
NORMALIZERS: Registry[Normalizer] = Registry("score normalisation")
NORMALIZERS.add("sum", lambda logprob, tokens, chars: logprob)
NORMALIZERS.add("mean", lambda logprob, tokens, chars: logprob / tokens)
NORMALIZERS.add("char", lambda logprob, tokens, chars: logprob / chars)


@dataclass(frozen=True)
class Continuations:
    """N continuations in one right-padded table; continuation n follows prompt owner[n]."""

    ids: Tensor  # (N, K) token ids, padded with 0 past each length
    lengths: Tensor  # (N,) tokens of each continuation, at least 1
    owner: Tensor  # (N,) the prompt row each continuation follows

    @classmethod
    def build(cls, per_prompt: Sequence[Sequence[Sequence[int]]]) -> Continuations:
        """From each prompt's list of continuations (token id lists)."""
        flat = [(b, list(c)) for b, conts in enumerate(per_prompt) for c in conts]
        if not flat or any(not c for _, c in flat):
            raise ConfigError("every prompt needs continuations, each of one token or more")
        K = max(len(c) for _, c in flat)
        ids = torch.zeros(len(flat), K, dtype=torch.long)
        for n, (_, c) in enumerate(flat):
            ids[n, : len(c)] = torch.tensor(c)
        lengths = torch.tensor([len(c) for _, c in flat])
        return cls(ids, lengths, torch.tensor([b for b, _ in flat]))

    @classmethod
    def same_for_all(cls, sequences: Sequence[Sequence[int]], prompts: int) -> Continuations:
        """The same C sequences after each of `prompts` prompts (rows b·C … b·C + C-1)."""
        return cls.build([sequences] * prompts)

    @property
    def longest(self) -> int:
        return int(self.ids.shape[1])

    def to(self, device: torch.device) -> Continuations:
        return Continuations(self.ids.to(device), self.lengths.to(device), self.owner.to(device))


@dataclass(frozen=True)
class TokenScores:
    logprob: Tensor  # (N, K) log p of each continuation token given all before it; 0 past the end
    greedy: Tensor  # (N,) bool: every token was the model's most likely next token

    def total(self) -> Tensor:
        """(N,) the log-likelihood of each whole continuation."""
        return self.logprob.sum(-1)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists → input_ids and attention_mask (B, T), padded on the left."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, T - len(row) :] = torch.tensor(list(row))
            mask[i, T - len(row) :] = 1
    return ids, mask


def score_continuations(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, continuations: Continuations
) -> TokenScores:
    """Token log-probabilities of every continuation after its prompt. Prompts are
    left-padded (B, T), each with at least one real token; gradients flow when enabled."""
    device = next(model.parameters()).device
    ids, mask = input_ids.to(device), attention_mask.to(device)
    cont = continuations.to(device)
    host = find_host(model)
    if host is not None:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens only
        if cont.longest == 1:
            last = _last_logits(host, ids, mask, positions)  # (B, V)
            return _scores(last[cont.owner][:, None], cont)
        cache = host.new_cache(ids.shape[0], ids.shape[1] + cont.longest - 1)
        last, cache = host.step(ids, mask, positions, cache)  # (B, V)
        if host.cache_length(cache) > 0:
            rest = _after_first(host, cache, cont, mask, positions)  # (N, K-1, V)
            return _scores(torch.cat([last[cont.owner][:, None], rest], 1), cont)
        if host.model is not host.plain:
            raise ConfigError(
                "the model dropped its KV cache (gradient checkpointing while training), and "
                "virtual tokens read labels of several tokens only through it",
                fix="set {train.gradient_checkpointing=false}",
            )
    return _scores(_full_rows(model, host, ids, mask, cont), cont)


def _last_logits(host: ModelHost, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
    """(B, V) logits of the last column, without a cache."""
    keeps = "logits_to_keep" in inspect.signature(host.model.forward).parameters
    out = host.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        **({"logits_to_keep": 1} if keeps else {}),
    )
    return out.logits[:, -1]


def _after_first(
    host: ModelHost, cache: Any, cont: Continuations, mask: Tensor, positions: Tensor
) -> Tensor:
    """(N, K-1, V) logits that predict tokens 1 … K-1 of each continuation from the cache."""
    K = cont.longest
    cache = host.select_rows(cache, cont.owner)
    steps = torch.arange(K - 1, device=mask.device)  # (K-1,)
    reads = (steps[None] < (cont.lengths[:, None] - 1)).long()  # (N, K-1): real inputs
    full_mask = torch.cat([mask[cont.owner], reads], 1)  # (N, T + K-1)
    after = positions[cont.owner, -1:] + 1 + steps[None]  # (N, K-1)
    logits, _ = host.extend(cont.ids[:, :-1], full_mask, after, cache)
    return logits


def _full_rows(
    model: nn.Module, host: ModelHost | None, ids: Tensor, mask: Tensor, cont: Continuations
) -> Tensor:
    """(N, K, V) logits from one right-padded row per distinct prompt + continuation[:-1]."""
    K = cont.longest
    prompts = [ids[b][mask[b].bool()].tolist() for b in range(ids.shape[0])]
    wholes = [
        prompts[b] + cont.ids[n, : int(length) - 1].tolist()
        for n, (b, length) in enumerate(zip(cont.owner.tolist(), cont.lengths))
    ]
    index: dict[tuple[int, ...], int] = {}
    for row in wholes:
        index.setdefault(tuple(row), len(index))
    rows = [list(r) for r in index]  # identical rows are computed once
    L = max(len(r) for r in rows)
    table = torch.zeros(len(rows), L, dtype=torch.long, device=ids.device)
    pad_mask = torch.zeros_like(table)
    for i, r in enumerate(rows):
        table[i, : len(r)] = torch.tensor(r, device=ids.device)
        pad_mask[i, : len(r)] = 1
    starts = torch.tensor([len(prompts[b]) - 1 for b in cont.owner.tolist()], device=ids.device)
    first = int(starts.min())  # the earliest position any continuation needs
    slices = host is not None and host.slices_logits and first > 0
    kwargs = {"logits_to_keep": L - first} if slices else {}
    logits = model(input_ids=table, attention_mask=pad_mask, **kwargs).logits[:, -(L - first) :]
    which = torch.tensor([index[tuple(r)] for r in wholes], device=ids.device)  # (N,)
    at = (starts - first)[:, None] + torch.arange(K, device=ids.device)[None]  # (N, K)
    at = at.clamp(max=L - first - 1)  # positions past a continuation's end are ignored
    rows_n = logits[which]  # (N, L - first, V)
    return rows_n.gather(1, at[..., None].expand(-1, -1, rows_n.shape[-1]))  # (N, K, V)


def _scores(logits: Tensor, cont: Continuations) -> TokenScores:
    """Log-probabilities of the continuation tokens under (N, K, V) logits."""
    logp = logits.float().log_softmax(-1)  # (N, K, V)
    valid = torch.arange(cont.longest, device=logp.device)[None] < cont.lengths[:, None]
    token = logp.gather(-1, cont.ids[..., None]).squeeze(-1) * valid  # (N, K)
    greedy = ((logp.argmax(-1) == cont.ids) | ~valid).all(-1)  # (N,)
    return TokenScores(token, greedy)


# ── label words as token sequences ──────────────────────────────────────────────────────────


def check_label_sequences(
    tokenizer: Tokenizer, sequences: Mapping[str, Sequence[int]], where: str = "labels"
) -> None:
    """Refuse two labels spelt by the same tokens; warn about a label read as one token that
    holds only part of a character (a lone byte-level piece)."""
    owner: dict[tuple[int, ...], str] = {}
    for label, seq in sequences.items():
        key = tuple(seq)
        if key in owner:
            raise ConfigError(
                f"{where}: {owner[key]!r} and {label!r} are the same tokens {list(key)} to this "
                "tokenizer, so no score can tell them apart; choose label words it spells "
                "differently"
            )
        owner[key] = label
    for label, seq in sequences.items():
        if len(seq) == 1 and "\ufffd" in tokenizer.decode(list(seq)):
            piece = tokenizer.id_to_token(seq[0])
            warnings.warn(
                f"{where}: label {label!r} is read as the single token {piece!r}, a piece of a "
                "character's UTF-8 bytes rather than a whole character: every character whose "
                "bytes begin the same way shares it, so its score says little about the "
                "label; choose a label word this tokenizer spells in whole characters",
                stacklevel=2,
            )
