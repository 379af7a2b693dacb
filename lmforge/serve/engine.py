"""The serving engine: continuous batching over a paged KV cache.

    submit(request) ─► waiting ─admit─► running ─┬─ step: decodes (1 token each)
                        ▲  (blocks for the       │        + prefill chunks (step_tokens budget)
                        │   prompt, prefix hits) │        one forward over all of them
                        └──── preempted ◄────────┤  sample per request ─► emit(Output)
                                                 └─ finished / cancelled ─► blocks released

Iteration-level scheduling (Yu et al., 2022, Orca): the batch is re-formed at every step, so a
request joins as soon as blocks are free and leaves the moment it ends, instead of waiting for
the longest request of a static batch. A long prompt is prefilled in chunks of at most
`step_tokens` tokens, so running decodes keep producing a token every step (chunked prefill,
Agrawal et al., 2024, Sarathi). When a decode needs a block and none is free, the most recently
admitted sequence gives its blocks back and is recomputed later (recompute preemption, vLLM).

The engine is driven by `step()`; `start()` runs steps in a background thread for a server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.model.generate import advance, stable_end
from lmforge.model.gpt import CausalLM
from lmforge.model.paged import PagedBatch, PagedKV, Segment, paged_forward
from lmforge.serve.blocks import BlockManager
from lmforge.serve.lora import AdapterStore
from lmforge.serve.requests import Output, Request, Sequence
from lmforge.serve.sampling import choose, logprobs_of
from lmforge.tokenizer import Tokenizer


@dataclass
class EngineConfig:
    block_size: int = 16  # tokens per KV-cache block
    kv_cache_mb: float = 256.0  # memory of the paged KV cache, in MB
    max_running: int = 16  # sequences decoded together at most
    step_tokens: int = 256  # new tokens one step runs at most (decodes first, then prefill chunks)
    prefix_caching: bool = True  # reuse the cached blocks of prompts that begin alike

    def validate(self) -> None:
        for name in ("block_size", "kv_cache_mb", "max_running", "step_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name} must be positive, got {getattr(self, name)}",
                    fix=f"raise {{engine.{name}}}",
                )
        if self.step_tokens < self.max_running:
            raise ConfigError(
                f"step_tokens ({self.step_tokens}) is below max_running "
                f"({self.max_running}): every running sequence decodes one token per step",
                fix=f"set {{engine.step_tokens={self.max_running}}} or more",
            )


@dataclass
class EngineStats:
    """Counters since the engine started, and the last step's state (for /metrics)."""

    requests: int = 0  # requests finished
    prompt_tokens: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    ttft_seconds: list[float] | None = None  # time to first token of recent requests


class Engine:
    """Continuous batching of requests over a native CausalLM's paged KV cache."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        config: EngineConfig | None = None,
        adapters: AdapterStore | None = None,
    ) -> None:
        if not isinstance(model, CausalLM):
            raise ConfigError(
                "the serving engine runs native models (load with backend='native'); "
                f"got {type(model).__name__}"
            )
        if model.config.mixer != "attention":  # the paged cache holds attention's keys/values
            raise ConfigError(
                f"the serving engine pages attention's keys and values; this model's mixer is "
                f"{model.config.mixer!r}, which has none",
                fix="decode it with `lmforge generate` (its recurrent state needs no paging)",
            )
        self.config = config or EngineConfig()
        self.config.validate()
        self.model, self.tokenizer, self.adapters = model.eval(), tokenizer, adapters
        c = self.config
        per_block = PagedKV.bytes_per_block(model, c.block_size)
        num_blocks = max(int(c.kv_cache_mb * 2**20) // per_block, 2)
        self.kv = PagedKV.for_model(model, num_blocks, c.block_size)
        self.blocks = BlockManager(num_blocks, c.block_size, c.prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.stats = EngineStats(ttft_seconds=[])
        self._inbox: list[Request] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ── the outside: submit, cancel, run ─────────────────────────────────────────────────
    def submit(self, request: Request) -> Request:
        """Queue a request (any thread); its `emit` is called after every step it runs in."""
        context = self.model.config.max_seq_len
        virtual = self._virtual(request.adapter)
        if virtual + len(request.prompt) + request.sampling.max_new_tokens > context:
            columns = f" + {virtual} virtual tokens of its adapter" if virtual else ""
            raise ConfigError(
                f"{len(request.prompt)} prompt tokens + max_tokens "
                f"{request.sampling.max_new_tokens}{columns} exceed the model's context of "
                f"{context}"
            )
        with self._lock:
            self._inbox.append(request)
            self._lock.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request at the next step (a client went away); its blocks are freed."""
        request.cancelled = True
        with self._lock:
            self._lock.notify()

    def _virtual(self, adapter: str) -> int:
        """Virtual columns the adapter puts before every prompt (0: none)."""
        prefix = self.adapters.prefix(adapter) if self.adapters is not None else None
        return prefix.length if prefix is not None else 0

    def busy(self) -> bool:
        return bool(self.waiting or self.running or self._inbox)

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then end the background thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self.busy() and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self.busy():
                    return
            self.step()

    def run_until_idle(self) -> None:
        """Step until every submitted request has finished (no background thread)."""
        while self.busy():
            self.step()

    # ── one step ─────────────────────────────────────────────────────────────────────────
    @torch.inference_mode()
    def step(self) -> None:
        with self._lock:
            self.waiting.extend(Sequence(r, self._virtual(r.adapter)) for r in self._inbox)
            self._inbox.clear()
        self._drop_cancelled()
        self._admit()
        plan = self._plan()
        if not plan:
            return
        try:
            logits = self._forward(plan)
        except Exception as e:  # a failed step fails its requests, never the engine
            for seq, _ in plan:
                self._finish(seq, "error", f"{type(e).__name__}: {e}")
            return
        sampled = [seq for seq, _ in plan if seq.pending == 0]
        self._sample(sampled, logits)
        self.stats.steps += 1

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.request.cancelled]:
            self._finish(seq, "cancelled")
        for seq in [s for s in self.waiting if s.request.cancelled]:
            self.waiting.remove(seq)
            seq.request.emit(Output([], "", [], "cancelled"))

    def _admit(self) -> None:
        """Move waiting sequences into the batch while their prompt's blocks fit."""
        bs = self.config.block_size
        while self.waiting and len(self.running) < self.config.max_running:
            seq = self.waiting[0]
            salt = seq.request.adapter
            hits, seq.hashes = self.blocks.match_prefix(seq.tokens, salt)
            need = -(-(len(seq.tokens) + 1) // bs) - len(hits)
            if need > self.blocks.available():
                self.blocks.release(hits)
                if not self.running:  # it will never fit: the cache is too small for it
                    self.waiting.popleft()
                    seq.table = []
                    self._finish(seq, "error", "the prompt does not fit in the KV cache")
                    continue
                return
            slot = self.adapters.acquire(salt) if self.adapters is not None else 0
            if slot is None:  # every adapter slot is busy: wait for one to be released
                self.blocks.release(hits)
                return
            self.waiting.popleft()
            seq.slot, seq.table, seq.computed = slot, hits, len(hits) * bs
            seq.registered = len(hits)
            if not seq.row.tokens:  # first admission (not a re-admission after preemption)
                seq.cached_tokens = max(seq.computed - seq.virtual, 0)
                self.blocks.stats.queried_tokens += len(seq.request.prompt)
                self.blocks.stats.hit_tokens += seq.cached_tokens
            if seq.computed < seq.virtual:
                self._write_virtual(seq)
            self.running.append(seq)

    def _write_virtual(self, seq: Sequence) -> None:
        """Put the adapter's virtual columns the prefix cache did not hold into seq's blocks
        (admission has checked that the blocks are free)."""
        bs, prefix = self.config.block_size, self.adapters.prefix(seq.request.adapter)
        while len(seq.table) * bs < seq.virtual:
            seq.table.append(self.blocks.allocate())
        start = seq.computed
        self.kv.write(seq.table, start, [k[start:] for k in prefix.keys],
                      [v[start:] for v in prefix.values])  # fmt: skip
        seq.computed = seq.virtual

    def _plan(self) -> list[tuple[Sequence, int]]:
        """(sequence, tokens to run) for this step: every decode, then prefill chunks."""
        budget = self.config.step_tokens
        plan = []
        for seq in sorted(self.running, key=lambda s: s.pending > 1):  # decodes first
            n = min(seq.pending, budget)
            if n == 0:
                break
            if not self._reserve(seq, seq.computed + n):
                continue  # seq itself was preempted
            plan.append((seq, n))
            budget -= n
        return [(s, n) for s, n in plan if s in self.running]

    def _reserve(self, seq: Sequence, length: int) -> bool:
        """Blocks for `length` tokens of seq, preempting the newest other sequences if needed."""
        while len(seq.table) * self.config.block_size < length:
            if self.blocks.available() == 0:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    return False
                continue
            seq.table.append(self.blocks.allocate())
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq.table)
        if self.adapters is not None:
            self.adapters.release(seq.request.adapter)
        seq.table, seq.computed = [], 0
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def _forward(self, plan: list[tuple[Sequence, int]]) -> torch.Tensor:
        """One forward over every planned token; logits (K, V) of the sequences now complete."""
        ids, segments, keep, slots, at = [], [], [], [], 0
        for seq, n in plan:
            ids.extend(seq.tokens[seq.computed : seq.computed + n])
            segments.append(Segment(seq.table, seq.computed, n))
            slots.extend([seq.slot] * n)
            at += n
            if seq.computed + n == len(seq.tokens):
                keep.append(at - 1)
        device = self.kv.keys[0].device
        batch = PagedBatch(self.kv, segments)
        if self.adapters is not None:
            self.adapters.bind(torch.tensor(slots, device=device))
        ids_t = torch.tensor(ids, dtype=torch.long, device=device)
        keep_t = torch.tensor(keep, dtype=torch.long, device=device)
        logits = paged_forward(self.model, ids_t, batch, keep_t)
        for seq, n in plan:
            seq.computed += n
            self._offer_prefix(seq)
        return logits

    def _offer_prefix(self, seq: Sequence) -> None:
        """Register the full prompt blocks now computed, for later prompts to reuse."""
        bs, prompt = self.config.block_size, seq.virtual + len(seq.request.prompt)
        full = min(seq.computed, prompt) // bs
        for i in range(seq.registered, min(full, len(seq.hashes))):
            self.blocks.register(seq.table[i], seq.hashes[i])
        seq.registered = max(seq.registered, full)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        now = time.monotonic()
        for i, (seq, token) in enumerate(zip(seqs, choose(logits, seqs))):
            r = seq.request
            logprob = [logprobs_of(logits[i], token, r.logprobs)] if r.logprobs is not None else []
            before = len(seq.row.tokens)
            advance(seq.row, token, r.sampling, set(r.eos), self.tokenizer.decode, live=True)
            if seq.first_token_at is None:
                seq.first_token_at = now
                self.stats.ttft_seconds = (self.stats.ttft_seconds + [now - r.arrival])[-1000:]
            new = seq.row.tokens[before:]
            self.stats.generated_tokens += len(new)
            if seq.row.finish_reason is None:
                seq.tokens.append(token)
            text = seq.row.text or ""
            end = len(text) if seq.row.finish_reason else stable_end(text, r.sampling.stop)
            piece, seq.shown = text[seq.shown : max(end, seq.shown)], max(end, seq.shown)
            if seq.row.finish_reason is not None:
                self._finish(seq, seq.row.finish_reason, tokens=new, text=piece, logprobs=logprob)
            else:
                r.emit(Output(new, piece, logprob))

    def _finish(
        self,
        seq: Sequence,
        reason: str,
        error: str = "",
        tokens: list[int] | None = None,
        text: str = "",
        logprobs: list | None = None,
    ) -> None:
        if seq in self.running:
            self.running.remove(seq)
            if self.adapters is not None:
                self.adapters.release(seq.request.adapter)
        self.blocks.release(seq.table)
        seq.table = []
        self.stats.requests += 1
        self.stats.prompt_tokens += len(seq.request.prompt)
        out = Output(tokens or [], text, logprobs or [], reason, error, seq.cached_tokens)
        seq.request.emit(out)
