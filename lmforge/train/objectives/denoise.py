"""Span corruption and UL2's mixture of denoisers, in a decoder with a prefix-LM mask.

T5 (Raffel et al. 2020) turns every task into text-to-text; its pretraining replaces random
spans of a text by sentinels and asks for the spans back. UL2 (Tay et al. 2022) mixes
denoisers that differ in span length and corruption rate, each announced by a mode token:

    R  regular: short spans (mean 3 or 8 tokens), 15% of the text
    S  sequential: a prefix, and the rest of the text as the target (prefix LM)
    X  extreme: long spans or a high rate (mean 3 at 50%, mean 32 at 15%)

In a decoder the input and the target are one row; the input part (the prefix) attends both
ways, the target part causally, and only the target is scored:

    text    a b c d e f g h i
    row     [R] a b <s0> e f <s1> i │ <s0> c d <s1> g h │ pad…
            └────── prefix P ───────┘└──── targets ─────┘
    labels  -100 … -100             │ <s0> c d <s1> g h │ -100…
    mask    key k visible from query q  ⇔  k < P  or  k ≤ q

A window of T tokens yields a row of T: the text used is cut to n tokens so that
n + 2·spans (+1 mode token) fits, and the rest of the window is padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.errors import ConfigError
from lmforge.model import loss_only
from lmforge.model.loss import IGNORE_INDEX
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives.base import OBJECTIVES, ObjectiveKind
from lmforge.train.state import Batch
from lmforge.train.validation import default_objective

SENTINEL = "<|sentinel_{}|>"
MODE_TOKEN = "<|mode_{}|>"  # <|mode_R|>, <|mode_S|>, <|mode_X|>


@dataclass(frozen=True)
class Denoiser:
    paradigm: str  # R | S | X: which mode token announces it
    mean_span: float  # mean length of a corrupted span; 0 = one suffix (prefix LM)
    rate: float  # share of the text that becomes target (for S: the mean suffix share)


DENOISERS: Registry[Denoiser] = Registry("denoiser")
DENOISERS.add("r", Denoiser("R", 3, 0.15))
DENOISERS.add("r8", Denoiser("R", 8, 0.15))
DENOISERS.add("s", Denoiser("S", 0, 0.25))
DENOISERS.add("x", Denoiser("X", 3, 0.5))
DENOISERS.add("x32", Denoiser("X", 32, 0.15))


@dataclass
class DenoisingOptions:
    mixture: list[str] = field(default_factory=lambda: ["r", "r8", "s", "x", "x32"])  # DENOISERS
    weights: list[float] = field(default_factory=list)  # probability of each (empty = equal)
    sentinels: int = 64  # sentinel tokens added to the tokenizer (most spans in one row)
    mode_tokens: bool = True  # start each row with its denoiser's mode token ([R] [S] [X])

    def validate(self) -> None:
        if not self.mixture:
            raise ConfigError("mixture is empty; name denoisers from " + str(DENOISERS.names()))
        for name in self.mixture:
            if name not in DENOISERS:
                raise ConfigError(f"mixture: unknown denoiser {name!r}; use {DENOISERS.names()}")
        if self.weights and (len(self.weights) != len(self.mixture) or min(self.weights) < 0):
            raise ConfigError("weights: one non-negative weight per mixture entry, or none")
        if self.sentinels < 1:
            raise ConfigError(f"sentinels must be at least 1, got {self.sentinels}")


@dataclass(frozen=True)
class Specials:
    """The ids the corruption writes: sentinels in order, mode tokens by paradigm, padding."""

    sentinels: list[int]
    modes: dict[str, int]  # empty: no mode tokens
    pad: int


def _compose(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive lengths, uniformly at random (total ≥ parts)."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_plan(n: int, denoiser: Denoiser, max_spans: int) -> tuple[int, int]:
    """(corrupted tokens, spans) for n tokens of text."""
    noise = min(max(1, round(n * denoiser.rate)), n - 1)
    spans = max(1, round(noise / denoiser.mean_span))
    return noise, min(spans, max_spans, noise, n - noise + 1)


def text_length(T: int, denoiser: Denoiser, max_spans: int, extra: int) -> int:
    """The most text n whose corrupted row (n + 2·spans + extra tokens) fits in T."""
    n = T - extra
    while n > 2 and n + 2 * span_plan(n, denoiser, max_spans)[1] + extra > T:
        n -= 1
    if n <= 2:
        raise ConfigError(f"rows of {T} tokens are too short to corrupt; raise data.seq_len")
    return n


def corrupt_row(
    text: np.ndarray, denoiser: Denoiser, ids: Specials, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """(prefix, targets) of one window of text (T tokens); together at most T tokens."""
    mode = [ids.modes[denoiser.paradigm]] if ids.modes else []
    T = len(text)
    if denoiser.mean_span == 0:  # S: the text's end is the target
        n = T - len(mode)
        high = max(1, min(n - 1, round(2 * denoiser.rate * n)))
        cut = n - int(rng.integers(1, high + 1))
        return mode + text[:cut].tolist(), text[cut:n].tolist()
    max_spans = len(ids.sentinels)
    n = text_length(T, denoiser, max_spans, len(mode))
    noise, spans = span_plan(n, denoiser, max_spans)
    noise_lengths = _compose(noise, spans, rng)
    keep_lengths = _compose(n - noise + 2, spans + 1, rng)  # kept text around the spans:
    keep_lengths[[0, -1]] -= 1  # the runs between spans are positive, the two ends may be empty
    prefix, targets, at = list(mode), [], 0
    for i in range(spans):
        prefix += text[at : at + keep_lengths[i]].tolist()
        at += keep_lengths[i]
        prefix.append(ids.sentinels[i])
        targets += [ids.sentinels[i], *text[at : at + noise_lengths[i]].tolist()]
        at += noise_lengths[i]
    return prefix + text[at:n].tolist(), targets


def prefix_lm_mask(prefix_lengths: Tensor, T: int) -> Tensor:
    """(B,) prefix lengths → (B, 1, T, T) boolean mask: k < P (both ways) or k ≤ q (causal)."""
    k = torch.arange(T, device=prefix_lengths.device)
    causal = k[None, :] <= k[:, None]  # (T, T) [q, k]
    open_prefix = k[None, None, :] < prefix_lengths[:, None, None]  # (B, 1, T) over keys
    return (causal[None] | open_prefix)[:, None]  # (B, 1, T, T)


def corrupt_batch(
    input_ids: Tensor, denoisers: list[Denoiser], ids: Specials, rng: np.random.Generator
) -> Batch:
    """Windows (B, T) → input_ids, labels (B, T) and the prefix-LM mask (B, 1, T, T); row b
    uses denoisers[b]."""
    B, T = input_ids.shape
    rows = input_ids.cpu().numpy()
    out = np.full((B, T), ids.pad, dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    prefix_lengths = np.zeros(B, dtype=np.int64)
    for b in range(B):
        prefix, targets = corrupt_row(rows[b], denoisers[b], ids, rng)
        P, end = len(prefix), len(prefix) + len(targets)
        out[b, :end] = prefix + targets
        labels[b, P:end] = targets
        prefix_lengths[b] = P
    device = input_ids.device
    lengths = torch.from_numpy(prefix_lengths).to(device)
    return {
        "input_ids": torch.from_numpy(out).to(device),
        "labels": torch.from_numpy(labels).to(device),
        "attention_mask": prefix_lm_mask(lengths, T),
    }


class Denoising:
    """The objective: each row corrupted by a denoiser drawn from the mixture, loss on its
    targets. Random draws come from torch's generator (restored on resume). Validation
    reports the plain next-token loss, so runs with other objectives compare."""

    def __init__(self, options: DenoisingOptions, ids: Specials) -> None:
        self.denoisers = [DENOISERS.get(name) for name in options.mixture]
        weights = np.asarray(options.weights or [1.0] * len(self.denoisers), dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.ids = ids
        self.validation = default_objective

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        if batch.get("attention_mask") is not None:
            raise ConfigError(
                "span corruption reads packed text windows, but the batch has an attention "
                "mask (padded or packed examples); use {objective=causal-lm} for this data"
            )
        seed = int(torch.randint(0, 2**62, ()))
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(self.denoisers), len(batch["input_ids"]), p=self.probabilities)
        chosen = [self.denoisers[i] for i in picks]
        corrupted = corrupt_batch(batch["input_ids"], chosen, self.ids, rng)
        with loss_only(model):
            return model(**corrupted).loss


def denoising_tokens(options: DenoisingOptions) -> list[str]:
    spans = any(DENOISERS.get(name).mean_span > 0 for name in options.mixture)
    tokens = [SENTINEL.format(i) for i in range(options.sentinels)] if spans else []
    if options.mode_tokens:
        tokens += [MODE_TOKEN.format(p) for p in "RSX"]
    return tokens


def specials(options: DenoisingOptions, tokenizer: Tokenizer | None) -> Specials:
    """The ids of the denoising tokens in `tokenizer`; ConfigError if it lacks any."""
    wanted = denoising_tokens(options)
    found = {t: tokenizer.token_to_id(t) if tokenizer is not None else None for t in wanted}
    missing = [t for t, i in found.items() if i is None]
    if missing:
        raise ConfigError(
            f"the tokenizer lacks the denoising token {missing[0]!r} ({len(missing)} missing); "
            "pretraining adds them to a new model's tokenizer, a pretrained model needs them "
            "already",
            fix="pretrain with {objective=ul2}, or keep {objective=causal-lm}",
        )
    has_spans = any(DENOISERS.get(name).mean_span > 0 for name in options.mixture)
    sentinels = [found[SENTINEL.format(i)] for i in range(options.sentinels)] if has_spans else []
    modes = {p: found[MODE_TOKEN.format(p)] for p in "RSX"} if options.mode_tokens else {}
    pad = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
    return Specials(sentinels, modes, pad)


def _build(options: DenoisingOptions, model: nn.Module, tokenizer: Tokenizer | None) -> Denoising:
    return Denoising(options, specials(options, tokenizer))


@dataclass
class SpanCorruptionOptions(DenoisingOptions):
    mixture: list[str] = field(default_factory=lambda: ["r"])  # T5: mean span 3, 15%
    mode_tokens: bool = False  # one denoiser needs no mode token


@dataclass
class PrefixLMOptions(DenoisingOptions):
    mixture: list[str] = field(default_factory=lambda: ["s"])  # a prefix and its continuation
    mode_tokens: bool = False  # one denoiser needs no mode token


for _name, _options, _help in (
    ("ul2", DenoisingOptions, "UL2's mixture of denoisers R, S, X with mode tokens"),
    ("span-corruption", SpanCorruptionOptions, "T5's span corruption in the decoder"),
    ("prefix-lm", PrefixLMOptions, "a bidirectional prefix and its causal continuation"),
):
    OBJECTIVES.add(_name, ObjectiveKind(_help, _options, _build, denoising_tokens))
