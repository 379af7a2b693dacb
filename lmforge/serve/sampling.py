"""Next tokens for a batch whose rows each have their own sampling settings.

Every row is chosen by generate's own `choose_tokens` with its request's settings and
generator, so a request draws the same tokens in a mixed batch as it does alone. Greedy rows
without a repetition penalty (the common case) are chosen together in one argmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.model.generate import choose_tokens
from lmforge.serve.requests import Sequence, TokenLogprob


def _processed(logits: Tensor, seqs: list[Sequence]) -> Tensor:
    """Each request's logits processor applied to its own row (a grammar mask, say)."""
    rows = [i for i, s in enumerate(seqs) if s.request.processor is not None]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        s = seqs[i]
        logits[i : i + 1] = s.request.processor(logits[i : i + 1], [0], [s.row.tokens])
    return logits


def choose(logits: Tensor, seqs: list[Sequence]) -> list[int]:
    """The next token of every sequence from its row of logits (B, V)."""
    logits = _processed(logits.float(), seqs)
    tokens = [0] * len(seqs)
    plain = [
        i
        for i, s in enumerate(seqs)
        if s.request.sampling.temperature == 0 and s.request.sampling.repetition_penalty == 1.0
    ]
    if plain:
        for i, t in zip(plain, logits[plain].argmax(dim=-1).tolist()):
            tokens[i] = t
    for i, s in enumerate(seqs):
        if i in plain:
            continue
        config = s.request.sampling
        if config.repetition_penalty != 1.0 and s.seen is None:
            s.seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool)
            s.seen[0, torch.tensor(s.tokens[s.virtual :])] = True
        tokens[i] = int(choose_tokens(logits[i : i + 1], s.seen, config, s.generator)[0])
        if s.seen is not None:
            s.seen[0, tokens[i]] = True
    return tokens


def logprobs_of(logits: Tensor, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability under the model and the `top` likeliest tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    best = logp.topk(top) if top else None
    alternatives = list(zip(best.indices.tolist(), best.values.tolist())) if best else []
    return TokenLogprob(token, float(logp[token]), alternatives)
