"""Log-likelihood of continuations, batched: how multiple-choice tasks are scored.

    request (context, continuation)
        whole = encode(context + continuation)          ctx = encode(context)
        n     = length of the longest common prefix of whole and ctx
        prompt = whole[:n]                               continuation = whole[n:]

The BPE boundary. A byte-level BPE may merge the end of the context with the start of
the continuation ("Topic: " + "sport" is encoded "Topic", ":", " sport"). The
continuation's tokens are defined as the tokens of encode(context + continuation) after
its longest common prefix with encode(context): exactly what the model would read if the
text were one string. A boundary token that merged is scored with the continuation; the
usual format (no trailing space in the context, " word" as the continuation) merges
nothing. An empty context is preceded by the tokenizer's BOS (or EOS) token.

Batching. Requests are grouped by prompt; each group is one row whose prompt is computed
once and whose continuations, of any length, are read through its KV cache
(model/continuations.py): a label word of six byte-level tokens after a shared prompt
costs its six tokens, not another copy of the prompt, and one-token label words cost the
prompt alone. Equal requests are scored once. Groups are sorted by length so that a
batch pads little. Rows longer than `max_length + 1` tokens lose their oldest context
tokens.

Normalisation (NORMALIZERS) turns a log-likelihood into a choice score: the sum, the mean
per token (Brown et al., 2020's per-token normalisation) or the mean per character.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from lmforge.errors import DataError
from lmforge.model.continuations import (
    NORMALIZERS,
    Continuations,
    left_pad,
    score_continuations,
)
from lmforge.model.host import host_for
from lmforge.tokenizer import Tokenizer


@dataclass(frozen=True)
class Request:
    context: str  # the text the continuation follows (the prompt)
    continuation: str  # the text whose likelihood is measured (a choice)


@dataclass(frozen=True)
class LogLikelihood:
    logprob: float  # Σ log p(token | everything before) over the continuation's tokens
    tokens: int  # how many continuation tokens were scored
    chars: int  # characters of the continuation
    greedy: bool  # every continuation token was the model's most likely next token


def normalized(ll: LogLikelihood, how: str) -> float:
    """The choice score of a log-likelihood under NORMALIZERS[how]."""
    return NORMALIZERS.get(how)(ll.logprob, ll.tokens, ll.chars)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while scoring; the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def context_length(model: nn.Module, max_length: int = 0) -> int:
    """`max_length` when given, else the model's context (native or transformers)."""
    return max_length if max_length > 0 else host_for(model).max_length()


def start_token(tokenizer: Tokenizer) -> int:
    """The token an empty context starts from: BOS if the tokenizer names one, else EOS."""
    bos = tokenizer.token_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
    start = bos if bos is not None else tokenizer.eos_id
    if start is None:
        raise DataError("an empty context needs a BOS or EOS token, and the tokenizer has neither")
    return start


def encode_request(
    tokenizer: Tokenizer, request: Request, max_length: int
) -> tuple[list[int], int]:
    """(token ids of context + continuation, number of them that are context)."""
    before, _ = tokenizer.input_specials  # a BOS the checkpoint puts before every input
    whole = before + tokenizer.encode(request.context + request.continuation)
    context = before + tokenizer.encode(request.context) if request.context else before
    n = 0
    while n < min(len(context), len(whole)) and context[n] == whole[n]:
        n += 1
    if n == len(whole):
        raise DataError(
            f"continuation {request.continuation!r} adds no tokens after its context; "
            "a choice must be non-empty text"
        )
    if n == 0:  # nothing to condition on: start from BOS/EOS
        whole, n = [start_token(tokenizer), *whole], 1
    if len(whole) - n > max_length:
        raise DataError(
            f"continuation {request.continuation[:40]!r} has {len(whole) - n} tokens, more than "
            f"the {max_length} the model can read; shorten it or raise max_length"
        )
    cut = max(0, len(whole) - (max_length + 1))  # oldest context tokens go first
    return whole[cut:], n - cut


def _batches(
    order: list[int], sizes: list[tuple[int, int]], size: int, tokens: int, limit: int
) -> Iterator[list[int]]:
    """Groups in `order` (longest first) batched by count and by padded tokens. A batch pads
    its prompts to the longest prompt and its continuations to the longest continuation, and
    the two together must fit the model's context."""
    batch: list[int] = []
    T = K = 0
    for g in order:
        t, k = max(T, sizes[g][0]), max(K, sizes[g][1])
        full = len(batch) == size or (len(batch) + 1) * (t + k) > tokens or t + k - 1 > limit
        if batch and full:
            yield batch
            batch, (t, k) = [], sizes[g]
        batch.append(g)
        T, K = t, k
    if batch:
        yield batch


@torch.inference_mode()
def loglikelihoods(
    model: nn.Module,
    tokenizer: Tokenizer,
    requests: Sequence[Request],
    *,
    batch_size: int = 8,
    max_length: int = 0,
    max_batch_tokens: int = 4096,
    progress: bool = False,
) -> list[LogLikelihood]:
    """The log-likelihood of each request's continuation after its context, in order."""
    limit = context_length(model, max_length)
    unique = list(dict.fromkeys(requests))  # equal requests are scored once
    encoded = [encode_request(tokenizer, r, limit) for r in unique]
    groups: dict[tuple[int, ...], list[int]] = {}  # prompt tokens → requests that follow it
    for u, (whole, n) in enumerate(encoded):
        groups.setdefault(tuple(whole[:n]), []).append(u)
    prompts = list(groups)
    sizes = [(len(p), max(len(encoded[u][0]) - len(p) for u in groups[p])) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda g: -sum(sizes[g]))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    results: list[LogLikelihood | None] = [None] * len(unique)
    batches = list(_batches(order, sizes, batch_size, max_batch_tokens, limit))
    with eval_mode(model):
        for batch in tqdm(batches, desc="log-likelihood", unit="batch", disable=not progress):
            members = [u for g in batch for u in groups[prompts[g]]]
            ids, mask = left_pad([prompts[g] for g in batch], pad)
            conts = [[encoded[u][0][encoded[u][1] :] for u in groups[prompts[g]]] for g in batch]
            scores = score_continuations(model, ids, mask, Continuations.build(conts))
            totals = scores.total().tolist()
            for i, u in enumerate(members):
                whole, n = encoded[u]
                chars = len(unique[u].continuation)
                greedy = bool(scores.greedy[i])
                results[u] = LogLikelihood(totals[i], len(whole) - n, chars, greedy)
    by_request = dict(zip(unique, results))
    return [by_request[r] for r in requests]


def choice_scores(
    model: nn.Module,
    tokenizer: Tokenizer,
    context: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    normalize: str = "sum",
    **kwargs: object,
) -> list[list[float]]:
    """Scores (one list per context) of each choice as a continuation of that context."""
    if len(context) != len(choices):
        raise DataError(f"{len(context)} contexts but {len(choices)} lists of choices")
    NORMALIZERS.get(normalize)  # an unknown name fails before any scoring
    requests = [Request(c, choice) for c, options in zip(context, choices) for choice in options]
    lls = iter(loglikelihoods(model, tokenizer, requests, **kwargs))
    return [[normalized(next(lls), normalize) for _ in options] for options in choices]


def choose(
    model: nn.Module,
    tokenizer: Tokenizer,
    context: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    normalize: str = "sum",
    **kwargs: object,
) -> list[int]:
    """The index of the best-scoring choice for each context (ties: the first)."""
    scores = choice_scores(model, tokenizer, context, choices, normalize=normalize, **kwargs)
    return [max(range(len(s)), key=lambda i: (s[i], -i)) for s in scores]
