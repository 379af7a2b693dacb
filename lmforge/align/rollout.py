"""The rollout phase of PPO and GRPO, as a BatchSource the one training loop drives.

The loop asks for a batch; when the buffer is empty, the source rolls out first:

    next_batch()
      └─ buffer empty? ── rollout:
           prompts  P records (a seeded permutation per pass over the prompt set)
           sample   k replies each from the current policy (model/generate.py: batched,
                    KV-cached; seed = f(run seed, rollout number))
           judge    one score per reply                                   (align/judges.py)
           prepare  the objective's own no-grad pass: old and reference log-probabilities,
                    values, advantages (GRPO: group-relative; PPO: KL-shaped rewards + GAE)
           queue    `epochs` shuffled passes over the P·k rows, `batch_size` rows a batch
      └─ pop the next batch (plus a pretraining batch for PPO-ptx)

so one optimizer step of the loop is one minibatch update, and a rollout serves
epochs · P·k / (batch_size · grad_accum) steps. The objective sees ordinary batches:
input_ids, attention_mask (right padding), labels (-100 on the prompt: the reply and its
end-of-turn token are scored), rewards (the judge's scores) and what `prepare` added.

The state (position in the prompt set, rollouts done, the prepared rollout and the queue of
row indices) is JSON, so a run stopped in the middle of a rollout resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lmforge.align.judges import Judge
from lmforge.chat import chat_format, chat_stop_tokens
from lmforge.data.loader import Batch, BatchSource
from lmforge.data.preferences import PromptRecord
from lmforge.errors import ConfigError, DataError
from lmforge.model.generate import SamplingConfig, generate
from lmforge.model.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer

INT_KEYS = ("input_ids", "attention_mask", "labels")


@dataclass
class RolloutSettings:
    prompts: int = 8  # prompts answered per rollout
    samples: int = 4  # replies sampled per prompt (GRPO's group size; 1 is usual for PPO)
    epochs: int = 1  # optimisation passes over each rollout
    max_new_tokens: int = 48  # longest reply
    temperature: float = 1.0  # sampling temperature; log-probabilities are taken at it too
    top_p: float = 1.0  # nucleus sampling mass (1.0 = off)
    max_prompt_length: int = 256  # a longer prompt keeps its last tokens

    def validate(self) -> None:
        for name in ("prompts", "samples", "epochs", "max_new_tokens", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rollout.{name} must be at least 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ConfigError(f"rollout.temperature must be positive, got {self.temperature}")

    def steps_per_rollout(self, batch_size: int, grad_accum: int) -> int:
        rows = self.prompts * self.samples
        if rows % (batch_size * grad_accum):
            raise ConfigError(
                f"a rollout of rollout.prompts × rollout.samples = {rows} replies does not "
                f"split into micro-batches of train.batch_size={batch_size} × "
                f"train.grad_accum={grad_accum}; make it a multiple"
            )
        return self.epochs * rows // (batch_size * grad_accum)


class RolloutMethod(Protocol):
    """What an objective adds to a scored rollout before training on it (PPO, GRPO)."""

    def prepare(self, model: nn.Module, rollout: Batch) -> Batch: ...


@dataclass
class Sampled:
    prompt: PromptRecord
    prompt_ids: list[int]
    reply_ids: list[int]  # the sampled tokens, then the end-of-turn token that ended them
    text: str  # the reply as the judge reads it


def prompt_ids(prompt: PromptRecord, tokenizer: Tokenizer, max_length: int) -> list[int]:
    text = chat_format(prompt.messages, tokenizer, add_generation_prompt=True)
    return tokenizer.encode(text)[-max_length:]


def sample_replies(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[PromptRecord],
    k: int,
    sampling: SamplingConfig,
    max_prompt_length: int = 256,
) -> list[Sampled]:
    """k replies to every prompt from one batched generate call (k rows per prompt, in order)."""
    ids = [prompt_ids(p, tokenizer, max_prompt_length) for p in prompts]
    rows = [i for i in range(len(prompts)) for _ in range(k)]
    out = generate(
        model,
        [ids[i] for i in rows],
        sampling,
        eos_token_id=chat_stop_tokens(tokenizer),
        pad_token_id=tokenizer.pad_id or 0,
        decode=tokenizer.decode,
    )
    sampled = []
    for i, result in zip(rows, out):
        reply = result.token_ids + ([result.eos_token] if result.eos_token is not None else [])
        sampled.append(Sampled(prompts[i], ids[i], reply, (result.text or "").strip()))
    return sampled


def rollout_batch(sampled: Sequence[Sampled], scores: Sequence[float], pad_id: int) -> Batch:
    """Right-padded rows of prompt + reply, labels on the reply, and the scores (N,)."""
    T = max(len(s.prompt_ids) + len(s.reply_ids) for s in sampled)
    ids = torch.full((len(sampled), T), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sampled):
        p, n = len(s.prompt_ids), len(s.prompt_ids) + len(s.reply_ids)
        ids[i, :n] = torch.tensor(s.prompt_ids + s.reply_ids)
        labels[i, p:n] = ids[i, p:n]
        mask[i, :n] = 1
    rewards = torch.tensor(list(scores), dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "rewards": rewards}


class RolloutSource:
    """BatchSource of minibatches of rollouts of `model` (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        method: RolloutMethod,
        prompts: Sequence[PromptRecord],
        tokenizer: Tokenizer,
        judge: Judge,
        settings: RolloutSettings,
        batch_size: int,
        seed: int = 0,
        generator: nn.Module | None = None,
        pretraining: BatchSource | None = None,
    ) -> None:
        settings.validate()
        if len(prompts) < settings.prompts:
            raise DataError(f"{len(prompts)} prompts cannot fill one rollout of {settings.prompts}")
        if (settings.prompts * settings.samples) % batch_size:
            raise ConfigError(
                f"rollout.prompts × rollout.samples must be a multiple of train.batch_size "
                f"({batch_size})"
            )
        self.model, self.method, self.prompts = model, method, list(prompts)
        self.generator = generator or model  # the causal LM that samples (PPO: the policy)
        self.tokenizer, self.judge, self.settings = tokenizer, judge, settings
        self.batch_size, self.seed, self.pretraining = batch_size, seed, pretraining
        self.epoch, self.index, self.rollouts = 0, 0, 0
        self.rollout: Batch | None = None
        self.queue: list[list[int]] = []

    # ── one rollout ─────────────────────────────────────────────────────────────────────

    def _next_prompts(self) -> list[PromptRecord]:
        n = self.settings.prompts
        if (self.index + 1) * n > len(self.prompts):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))
        picks = order[self.index * n : (self.index + 1) * n]
        self.index += 1
        return [self.prompts[i] for i in picks]

    def _roll_out(self) -> None:
        s = self.settings
        sampling = SamplingConfig(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=self.seed * 1_000_003 + self.rollouts,
        )
        sampled = sample_replies(
            self.generator,
            self.tokenizer,
            self._next_prompts(),
            s.samples,
            sampling,
            s.max_prompt_length,
        )
        scores = self.judge([x.prompt for x in sampled], [x.text for x in sampled])
        batch = rollout_batch(sampled, scores, self.tokenizer.pad_id or 0)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                prepared = self.method.prepare(
                    self.model, {k: v.to(device) for k, v in batch.items()}
                )
        finally:
            self.model.train(was_training)
        self.rollout = {k: v.detach().cpu() for k, v in prepared.items()}
        self.rollouts += 1
        self.queue = self._passes(len(sampled))

    def _passes(self, rows: int) -> list[list[int]]:
        queue = []
        for epoch in range(self.settings.epochs):
            order = np.random.default_rng([self.seed, self.rollouts, epoch]).permutation(rows)
            queue += [
                order[i : i + self.batch_size].tolist() for i in range(0, rows, self.batch_size)
            ]
        return queue

    # ── BatchSource ─────────────────────────────────────────────────────────────────────

    def next_batch(self) -> Batch:
        if not self.queue:
            self._roll_out()
        picks = torch.tensor(self.queue.pop(0))
        batch = {k: v[picks] for k, v in self.rollout.items()}
        used = batch["attention_mask"].sum(0).nonzero()
        width = int(used.max()) + 1  # drop columns that are padding in every picked row
        batch = {k: v[:, :width] if v.dim() == 2 else v for k, v in batch.items()}
        if self.pretraining is not None:
            batch.update({f"ptx_{k}": v for k, v in self.pretraining.next_batch().items()})
        return batch

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "index": self.index,
            "rollouts": self.rollouts,
            "seed": self.seed,
            "queue": self.queue,
            "rollout": None,
        }
        if self.rollout is not None and self.queue:  # an unfinished rollout travels along
            state["rollout"] = {k: v.tolist() for k, v in self.rollout.items()}
        if self.pretraining is not None:
            state["pretraining"] = self.pretraining.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]
        self.rollouts, self.queue = state["rollouts"], [list(q) for q in state["queue"]]
        saved = state.get("rollout")
        self.rollout = None
        if saved is not None:
            self.rollout = {
                k: torch.tensor(v, dtype=torch.long if k in INT_KEYS else torch.float32)
                for k, v in saved.items()
            }
        if self.pretraining is not None and "pretraining" in state:
            self.pretraining.load_state_dict(state["pretraining"])
