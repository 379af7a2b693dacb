"""Perplexity of a model on text: exp of the token-weighted mean negative log-likelihood.

The documents are tokenized and joined into one stream with EOS between them (as the
pretraining shards are), then cut into consecutive windows of L predicted tokens. Each
window reads L tokens and predicts the next L, so every token after the first is
predicted exactly once, from at most L tokens of context (no overlap, no striding):

    stream   t0 t1 t2 t3 t4 t5 t6 t7 t8
    window 1 [t0 t1 t2 t3] → t1 t2 t3 t4        L = 4
    window 2             [t4 t5 t6 t7] → t5 t6 t7 t8

    NLL = Σ -log p(t_i | window context) / #predicted,    perplexity = exp(NLL)
    bits per byte = Σ -log₂ p / UTF-8 bytes of the predicted text (comparable across tokenizers)

L defaults to the model's context, capped at 2048 tokens: a window's logits are an
(L, V) float tensor, 400 MB for SmolLM2 at L = 2048. `max_tokens` stops the stream early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lmforge.data.corpora import load_corpus
from lmforge.errors import ConfigError, DataError
from lmforge.eval.base import KINDS, EvalSettings, PerplexityTask, TaskKind, TaskResult
from lmforge.eval.loglik import context_length, eval_mode
from lmforge.tokenizer import Tokenizer

WINDOW_CAP = 2048  # default window limit, whatever the model's context


@dataclass(frozen=True)
class Perplexity:
    nll: float  # mean negative log-likelihood per predicted token, in nats
    perplexity: float  # exp(nll)
    bits_per_byte: float  # Σ -log₂ p over the UTF-8 bytes of the predicted text
    tokens: int  # tokens predicted
    windows: int  # forward windows scored


def token_stream(tokenizer: Tokenizer, texts: Iterable[str], max_tokens: int = 0) -> list[int]:
    """Documents joined by EOS, each encoded as a whole input (with the BOS the checkpoint
    adds, if any); with max_tokens, the first max_tokens + 1 tokens only."""
    stream: list[int] = []
    for text in texts:
        if stream and tokenizer.eos_id is not None:
            stream.append(tokenizer.eos_id)
        stream.extend(tokenizer.encode(text, add_special_tokens=True))
        if max_tokens and len(stream) > max_tokens:
            return stream[: max_tokens + 1]
    return stream


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Iterable[str],
    *,
    max_length: int = 0,
    max_tokens: int = 0,
    batch_size: int = 1,
    progress: bool = False,
) -> Perplexity:
    """Perplexity of `model` on `texts` in windows of max_length (default: its context)."""
    L = max_length if max_length > 0 else min(context_length(model), WINDOW_CAP)
    stream = token_stream(tokenizer, texts, max_tokens)
    if len(stream) < 2:
        raise DataError("perplexity needs at least two tokens of text; the texts are empty")
    starts = list(range(0, len(stream) - 1, L))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model):
        chunks = range(0, len(starts), batch_size)
        for c in tqdm(chunks, desc="perplexity", unit="batch", disable=not progress):
            windows = [stream[s : s + L + 1] for s in starts[c : c + batch_size]]
            T = max(len(w) for w in windows) - 1
            ids = torch.zeros(len(windows), T, dtype=torch.long)
            targets = torch.full((len(windows), T), -100, dtype=torch.long)  # -100 = padding
            for i, w in enumerate(windows):
                ids[i, : len(w) - 1] = torch.tensor(w[:-1])
                targets[i, : len(w) - 1] = torch.tensor(w[1:])
            mask = (targets != -100).long()  # (B, T)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            nll = F.cross_entropy(
                logits.float().flatten(0, 1), targets.to(device).flatten(), reduction="sum"
            )
            total += float(nll)
            count += int(mask.sum())
    text = tokenizer.decode(stream[1:], skip_special_tokens=True)
    n_bytes = max(1, len(text.encode("utf-8")))
    mean = total / count
    return Perplexity(mean, math.exp(mean), total / math.log(2) / n_bytes, count, len(starts))


def run_perplexity(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: PerplexityTask,
    s: EvalSettings,
    *,
    embed: Callable | None = None,
    progress: bool = False,
) -> TaskResult:
    """Perplexity, NLL and bits per byte on the task's corpus (or settings.data)."""
    p = s.perplexity
    source = p.data or task.corpus
    if not source:
        raise ConfigError(
            f"task {task.name!r} needs a corpus to score",
            fix="give {data=CORPUS}, a file or a folder",
        )
    start = time.time()
    window = s.max_length or min(context_length(model), WINDOW_CAP)
    result = perplexity(
        model,
        tokenizer,
        load_corpus(source).texts(),
        max_length=window,
        max_tokens=p.max_tokens,
        batch_size=max(1, min(s.batch_size, 4096 // window)),  # bounds the (B, L, V) logits
        progress=progress,
    )
    return TaskResult(
        task=task.name,
        metrics={
            "perplexity": result.perplexity,
            "nll": result.nll,
            "bits_per_byte": result.bits_per_byte,
        },
        n=result.tokens,
        seconds=time.time() - start,
        settings={**s.record(p), "data": source, "window": window},
    )


def describe_perplexity(settings: dict) -> str:
    """'window 2048, shakespeare'."""
    return f"window {settings.get('window')}, {settings.get('data')}"


KINDS.add("perplexity", TaskKind(run_perplexity, describe_perplexity))
