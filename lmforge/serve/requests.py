"""What a request asks of the engine and what the engine reports back after each step."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmforge.model.generate import Row, SamplingConfig

# (logits (B', V) of the rows still generating, their indices in the batch, the tokens each
# has generated so far) → logits: the signature of generate's logits_processor, so a grammar
# mask written for generate (constrained decoding, tool calls) works per request here.
LogitsProcessor = Callable[[Tensor, list[int], list[list[int]]], Tensor]
_ids = itertools.count()


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens and their log-probabilities


@dataclass
class Output:
    """One step's news for one request."""

    token_ids: list[int]  # tokens added by this step (EOS not included)
    text: str  # text that became stable in this step (never part of a stop string)
    logprobs: list[TokenLogprob]  # one per token, when asked for
    finish_reason: str | None = None  # eos | stop | length | cancelled | error; None: more comes
    error: str = ""  # what went wrong, with finish_reason "error"
    cached_tokens: int = 0  # with the last output: prompt tokens read from the prefix cache


@dataclass
class Request:
    """A prompt (token ids) to continue with its own sampling settings."""

    prompt: list[int]
    sampling: SamplingConfig
    emit: Callable[[Output], None]  # called from the engine's thread after every step
    eos: list[int] = field(default_factory=list)  # ids that end the reply
    adapter: str = ""  # a LoRA adapter's name ("" = the base model)
    logprobs: int | None = None  # report log-probabilities with this many alternatives
    processor: LogitsProcessor | None = None  # constrained decoding and the like
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class Sequence:
    """A request while it runs: its tokens, its blocks and its decoding state."""

    def __init__(self, request: Request, virtual: int = 0) -> None:
        self.request = request
        self.virtual = virtual  # the adapter's virtual columns ahead of the prompt (0: none)
        # placeholders for the virtual columns (written into the cache, never run), prompt,
        # generated tokens: what the cache must hold
        self.tokens = [0] * virtual + list(request.prompt)
        self.computed = 0  # tokens whose keys/values are in the cache
        self.table: list[int] = []  # block ids
        self.hashes: list[bytes] = []  # prefix hashes of the full blocks of `tokens`
        self.registered = 0  # full prompt blocks offered to the prefix cache
        self.cached_tokens = 0  # prompt tokens found in the prefix cache
        self.row = Row(len(request.prompt))
        self.shown = 0  # characters of row.text already reported
        self.first_token_at: float | None = None
        self.slot = 0  # the adapter's slot in the batched LoRA layers (0 = none)
        s = request.sampling
        self.generator = None if s.seed is None else torch.Generator().manual_seed(s.seed)
        self.seen: Tensor | None = None  # (1, V) tokens seen, for the repetition penalty

    @property
    def pending(self) -> int:
        """Tokens to run before the next one can be sampled."""
        return len(self.tokens) - self.computed
