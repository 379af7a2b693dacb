"""Log-likelihood of continuations, batched: how multiple-choice tasks are scored.

    request (context, continuation)
        whole = encode(context + continuation)          ctx = encode(context)
        n     = length of the longest common prefix of whole and ctx
        row   = whole[:-1]  (what the model reads)       targets = whole[n:]  at positions n-1…

The BPE boundary. A byte-level BPE may merge the end of the context with the start of
the continuation ("Topic: " + "sport" is encoded "Topic", ":", " sport"). The
continuation's tokens are defined as the tokens of encode(context + continuation) after
its longest common prefix with encode(context): exactly what the model would read if the
text were one string. A boundary token that merged is scored with the continuation; the
usual format (no trailing space in the context, " word" as the continuation) merges
nothing. An empty context is preceded by the tokenizer's BOS (or EOS) token.

Batching. Each request becomes one row; identical rows are computed once, so choices of
one token each after a shared context (the usual verbalizer) cost a single row. Rows are
right-padded (positions run 0..len-1 on every backend), sorted by length so that a batch
pads little, and sliced to the positions that are scored before the log-softmax. Rows
longer than `max_length + 1` tokens lose their oldest context tokens.

Normalisation (NORMALIZERS) turns a log-likelihood into a choice score: the sum, the mean
per token (Brown et al., 2020's per-token normalisation) or the mean per character.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from lmforge.errors import DataError
from lmforge.model.host import find_host, host_for
from lmforge.registry import Registry
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


NORMALIZERS: Registry[Callable[[LogLikelihood], float]] = Registry("score normalisation")
NORMALIZERS.add("sum", lambda ll: ll.logprob)
NORMALIZERS.add("mean", lambda ll: ll.logprob / ll.tokens)
NORMALIZERS.add("char", lambda ll: ll.logprob / max(1, ll.chars))


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


def _batches(order: list[int], lengths: list[int], size: int, tokens: int) -> Iterator[list[int]]:
    """Rows in `order` (longest first) grouped by count and by padded tokens."""
    batch: list[int] = []
    for r in order:
        if batch and (len(batch) == size or (len(batch) + 1) * lengths[batch[0]] > tokens):
            yield batch
            batch = []
        batch.append(r)
    if batch:
        yield batch


def _forward(model: nn.Module, rows: list[list[int]], keep: int, slice_ok: bool) -> Tensor:
    """Logits (B, keep, V) of the last `keep` padded positions of right-padded rows."""
    device = next(model.parameters()).device
    T = len(rows[0])  # the longest row comes first
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    kwargs = {"logits_to_keep": keep} if slice_ok and keep < T else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
    return logits[:, -keep:]  # (B, keep, V), sliced by the model or here


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
    row_of: dict[tuple[int, ...], int] = {}
    for whole, _ in encoded:
        row_of.setdefault(tuple(whole[:-1]), len(row_of))
    rows = [list(key) for key in row_of]
    readers: list[list[int]] = [[] for _ in rows]  # row → the unique requests it scores
    for u, (whole, _) in enumerate(encoded):
        readers[row_of[tuple(whole[:-1])]].append(u)
    lengths = [len(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda r: -lengths[r])
    host = find_host(model)  # wrappers may rearrange their columns: they are not sliced
    slice_ok = host is not None and host.slices_logits
    results: list[LogLikelihood | None] = [None] * len(unique)
    batches = list(_batches(order, lengths, batch_size, max_batch_tokens))
    with eval_mode(model):
        for batch in tqdm(batches, desc="log-likelihood", unit="batch", disable=not progress):
            first = min(encoded[u][1] - 1 for r in batch for u in readers[r])
            T = lengths[batch[0]]
            logits = _forward(model, [rows[r] for r in batch], T - first, slice_ok)
            for b, r in enumerate(batch):
                for u in readers[r]:
                    whole, n = encoded[u]
                    targets = torch.tensor(whole[n:], device=logits.device)  # (k,)
                    logp = logits[b, n - 1 - first : len(whole) - 1 - first].float()  # (k, V)
                    logp = logp.log_softmax(dim=-1)
                    score = logp.gather(-1, targets[:, None]).sum()
                    greedy = bool((logp.argmax(dim=-1) == targets).all())
                    chars = len(unique[u].continuation)
                    results[u] = LogLikelihood(float(score), len(targets), chars, greedy)
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
    norm = NORMALIZERS.get(normalize)
    requests = [Request(c, choice) for c, options in zip(context, choices) for choice in options]
    lls = iter(loglikelihoods(model, tokenizer, requests, **kwargs))
    return [[norm(next(lls)) for _ in options] for options in choices]


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
