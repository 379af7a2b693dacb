"""Text generation: one prefill forward, then one token per step through a KV cache.

    prompts ─► left-pad + attention_mask ─► prefill ─► last logits (B, V)
                                                          │
        ┌─────────────── cache (past keys/values) ◄───────┤
        │                                                 ▼
        │      repetition penalty ─► temperature ─► top-k ─► top-p ─► sample | argmax
        │                                                 │
        └──► forward(new token (B, 1), mask + [1]) ◄──────┘   until EOS, stop string or length

Logits processing, in that order:
  * repetition penalty (Keskar et al., 2019, CTRL): for every token already in the prompt
    or the output, a positive logit is divided by θ and a negative one multiplied by θ;
  * temperature (softmax(z / T)); T = 0 means greedy decoding (argmax, no sampling);
  * top-k (Fan et al., 2018): keep the k largest logits;
  * top-p, nucleus sampling (Holtzman et al., 2020): keep the smallest set of most likely
    tokens whose probability reaches p (the most likely token is always kept).

Prompts of different lengths are padded on the left, so that every row's next token sits
in the last column; positions count real tokens only, so padding changes nothing. Finished
rows leave the batch (their cache rows are dropped). The code works on token ids; text,
stop strings and streaming only need a `decode(ids) -> str` function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError, DataError
from lmforge.model.host import host_for

FinishReason = Literal["eos", "stop", "length"]
Decode = Callable[[list[int]], str]
# (logits (B', V) of the rows still generating, their indices in the batch, the tokens each
# has generated so far) → logits; applied before the other processing (e.g. a grammar mask).
LogitsProcessor = Callable[[Tensor, list[int], list[list[int]]], Tensor]
REPLACEMENT_CHAR = "\ufffd"  # what a byte-level decoder shows for an incomplete character


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64  # most new tokens generated for one prompt
    temperature: float = 1.0  # softmax temperature; 0 = greedy decoding (argmax)
    top_k: int = 0  # sample only among the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: smallest set of tokens with this total probability; 1.0 = off
    repetition_penalty: float = 1.0  # CTRL penalty on tokens already seen; 1.0 = off
    seed: int | None = None  # seed of the sampling generator; None = torch's global RNG
    stop: list[str] = field(default_factory=list)  # strings that end the text (not included)

    def validate(self) -> None:
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1] (1.0 = off)"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0 (1.0 = off)"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty strings"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"sampling.{name} {rule}, got {getattr(self, name)!r}")


@dataclass
class GenerationResult:
    token_ids: list[int]  # the new tokens only (an EOS that ended the row is not included)
    text: str | None  # decode(token_ids), cut before a stop string; None without decode
    finish_reason: FinishReason  # "eos", "stop" (a stop string appeared) or "length"
    prompt_length: int  # tokens of the prompt that were read (after truncation)
    eos_token: int | None = None  # the EOS id that ended the row (finish_reason "eos")


# --- logits processors: (B, V) float logits in, (B, V) out ---------------------------------


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL penalty: seen tokens' positive logits / penalty, negative ones × penalty."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)  # seen: (B, V) bool


def apply_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too)."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the most likely tokens until their probability reaches p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def choose_tokens(
    logits: Tensor, seen: Tensor | None, config: SamplingConfig, generator: torch.Generator | None
) -> Tensor:
    """The next token of every row (B,) from the last logits (B, V)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k:
        logits = apply_top_k(logits, config.top_k)
    if config.top_p < 1.0:
        logits = apply_top_p(logits, config.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --- preparing the batch ------------------------------------------------------------------


def _fit_prompts(
    prompts: list[list[int]], max_new: int, context: int, vocab: int, truncate: bool
) -> list[list[int]]:
    """Check every prompt; with `truncate`, keep the last tokens that leave room for max_new."""
    room = context - max_new
    if room < 1:
        raise ConfigError(
            f"sampling.max_new_tokens={max_new} leaves no room for a prompt in the model's "
            f"context of {context} tokens",
            fix="lower {max_new_tokens}",
        )
    fitted = []
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise DataError(f"prompt {i} is empty; give at least one token (e.g. BOS)")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise DataError(
                f"prompt {i} holds token id {bad[0]}, outside the vocabulary 0..{vocab - 1}"
            )
        if len(prompt) > room and not truncate:
            raise ConfigError(
                f"prompt {i} has {len(prompt)} tokens; with sampling.max_new_tokens={max_new} "
                f"that exceeds the model's context of {context} tokens",
                fix="shorten the prompt, lower {max_new_tokens}, or pass {truncate=true} to keep "
                f"its last {room} tokens",
            )
        fitted.append(list(prompt[-room:]))
    return fitted


def _left_pad(prompts: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """input_ids and attention_mask (B, L), real tokens flush right."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: Tensor, T: int) -> Tensor:
    """Positions of the last T columns (B, T), counting real tokens only."""
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -T:]


def _seen_matrix(ids: Tensor, mask: Tensor, vocab: int) -> Tensor:
    """(B, V) bool: which tokens each row's prompt holds (padding excluded)."""
    index = ids.masked_fill(mask == 0, vocab)  # padding goes to a spare column, dropped below
    seen = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.bool, device=ids.device)
    return seen.scatter_(1, index, True)[:, :vocab]


# --- the decoding loop --------------------------------------------------------------------


@dataclass
class Row:
    """One continuation while it is generated (the serving engine keeps one per request)."""

    prompt_length: int
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: FinishReason | None = None
    eos_token: int | None = None


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def advance(
    row: Row, token: int, config: SamplingConfig, eos: set[int], decode: Decode | None, live: bool
) -> None:
    """Append one token to a row and decide whether the row is finished."""
    if token in eos:
        row.finish_reason, row.eos_token = "eos", token
        return
    row.tokens.append(token)
    if decode is not None and (live or config.stop):
        row.text = decode(row.tokens)
        cut = _first_stop(row.text, config.stop)
        if cut is not None:
            row.text, row.finish_reason = row.text[:cut], "stop"
            return
    if len(row.tokens) >= config.max_new_tokens:
        row.finish_reason = "length"


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()  # no dropout while generating
    try:
        yield
    finally:
        model.train(was_training)


def _decode_loop(
    model: nn.Module,
    prompts: list[list[int]],
    config: SamplingConfig,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    decode: Decode | None,
    truncate: bool,
    live: bool,
    processor: LogitsProcessor | None = None,
) -> Iterator[list[Row]]:
    """Yield the rows after every step (the same list, updated in place).

    `live` keeps row.text current after every token (streaming needs it)."""
    config.validate()
    if config.stop and decode is None:
        raise ConfigError("sampling.stop needs a decode function to read the text; pass decode=")
    host = host_for(model)
    vocab = model.get_input_embeddings().num_embeddings
    prompts = _fit_prompts(prompts, config.max_new_tokens, host.max_length(), vocab, truncate)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    device = next(model.parameters()).device
    generator = None if config.seed is None else torch.Generator(device).manual_seed(config.seed)
    rows = [Row(len(p)) for p in prompts]
    active = list(rows)  # the rows still generating, in batch order
    batch_index = list(range(len(rows)))  # their places in the batch
    ids, mask = _left_pad(prompts, pad_token_id, device)  # (B, L)
    cache = host.new_cache(len(prompts), ids.shape[1] + config.max_new_tokens)
    logits, cache = host.step(ids, mask, _positions(mask, ids.shape[1]), cache)  # (B, V)
    seen = None
    if config.repetition_penalty != 1.0:
        seen = _seen_matrix(ids, mask, logits.shape[-1])
    while True:
        if processor is not None:
            logits = processor(logits, batch_index, [row.tokens for row in active])
        new = choose_tokens(logits, seen, config, generator)  # (B,)
        for row, token in zip(active, new.tolist()):
            advance(row, token, config, eos, decode, live)
        yield rows
        keep = [j for j, row in enumerate(active) if row.finish_reason is None]
        if not keep:
            return
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache = host.select_rows(cache, index)
            mask, new = mask[index], new[index]
            seen = seen[index] if seen is not None else None
            active = [active[j] for j in keep]
            batch_index = [batch_index[j] for j in keep]
        if seen is not None:
            seen[torch.arange(len(active), device=device), new] = True
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)  # (B', S+1)
        logits, cache = host.step(new[:, None], mask, _positions(mask, 1), cache)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    config: SamplingConfig,
    *,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int = 0,
    decode: Decode | None = None,
    truncate: bool = False,
    logits_processor: LogitsProcessor | None = None,
) -> list[GenerationResult]:
    """Continue every prompt (token ids) in one batch; one result per prompt, in order.

    `logits_processor` sees each step's logits first (see LogitsProcessor)."""
    if not prompts:
        return []
    with _eval_mode(model):
        *_, rows = _decode_loop(
            model, prompts, config, eos_token_id, pad_token_id, decode, truncate, False,
            logits_processor,
        )  # fmt: skip
    results = []
    for row in rows:
        text = row.text
        if decode is not None and row.finish_reason != "stop":
            text = decode(row.tokens)
        results.append(
            GenerationResult(row.tokens, text, row.finish_reason, row.prompt_length, row.eos_token)
        )
    return results


def stable_end(text: str, stops: list[str]) -> int:
    """How much of an unfinished text can be shown for good.

    A trailing U+FFFD may be half of a multi-byte character, and a suffix that begins a
    stop string may turn out to be one; both wait for the next token."""
    end = len(text.rstrip(REPLACEMENT_CHAR))
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), held, -1):
            if text.endswith(stop[:k], 0, end):
                held = k
                break
    return end - held


@torch.inference_mode()
def stream(
    model: nn.Module,
    prompt: list[int],
    config: SamplingConfig,
    *,
    eos_token_id: int | list[int] | None = None,
    decode: Decode,
    pad_token_id: int = 0,
    truncate: bool = False,
    logits_processor: LogitsProcessor | None = None,
) -> Iterator[str]:
    """Yield the text of one continuation piece by piece, as soon as it is stable.

    The pieces concatenate to `generate(...)[0].text`; a stop string is never emitted."""
    shown = 0
    with _eval_mode(model):
        for rows in _decode_loop(
            model, [prompt], config, eos_token_id, pad_token_id, decode, truncate, True,
            logits_processor,
        ):  # fmt: skip
            row = rows[0]
            text = row.text or ""
            end = len(text) if row.finish_reason else stable_end(text, config.stop)
            if end > shown:
                yield text[shown:end]
                shown = end
