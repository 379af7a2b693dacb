"""Preference data: a prompt, a chosen and a rejected reply; and prompt sets for rollouts.

Three record formats, detected per record, in any file type the instruction readers take
(.jsonl, .json, .csv, .parquet; see data/instruct_files.py):

    standard        {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
                    the prompt is one user turn (plus an optional "system" string)
    conversational  {"prompt": [{role, content}, ...], "chosen": [{"role": "assistant", ...}],
                     "rejected": [...]}          chosen/rejected: one assistant message or a string
    implicit        {"chosen": [...whole conversation...], "rejected": [...]}
                    the prompt is the messages both share; each ends with its own reply

Every pair becomes a `PreferencePair(prompt messages, chosen text, rejected text, meta)`. A bad
record raises DataError naming `file:line` and the field (`chosen[0].role`), or is skipped and
counted with skip_bad. Tokenisation goes through the chat template: each side is the
conversation prompt + reply encoded by `encode_conversation`, so the labels cover the reply
and its end-of-turn token only.

    PairBatches  batch of B pairs = 2B rows, chosen first:  rows 0..B-1 chosen, B..2B-1 rejected

Prompt sets (the prompts a policy answers during PPO/GRPO rollouts or build-preferences) are
records with "prompt" (a string or messages ending with a user turn), or "messages"; every
other field is kept in `meta` for the judge (an answer, a label).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.atomic import atomic_write_text
from lmforge.data.instruct import BadRecord, Message, parse_files, validate_conversation
from lmforge.data.loader import Batch
from lmforge.data.sft import EncodedExample, collate_padded, encode_conversation
from lmforge.data.text import Skipped
from lmforge.errors import CheckpointError, DataError
from lmforge.tokenizer import Tokenizer


@dataclass
class PreferencePair:
    """One comparison: after `prompt` (messages ending with a user turn), `chosen` is the
    better reply than `rejected`."""

    prompt: list[Message]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The conversational form, which holds any prompt."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "meta": dict(self.meta),
        }

    def conversation(self, which: str) -> list[Message]:
        """The prompt followed by the chosen or rejected reply."""
        reply = self.chosen if which == "chosen" else self.rejected
        return [*self.prompt, {"role": "assistant", "content": reply}]


@dataclass
class PromptRecord:
    """A prompt to answer, with what a judge needs to score the answer (label, answer...)."""

    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)


# ── parsing one record ───────────────────────────────────────────────────────────────────


def _reply(value: Any, key: str) -> str:
    """A reply given as a string or as a list of exactly one assistant message."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        if value[0].get("role") != "assistant":
            raise BadRecord(f"{key}[0].role: must be 'assistant', got {value[0].get('role')!r}")
        text = value[0].get("content")
        if not isinstance(text, str):
            raise BadRecord(f"{key}[0].content: must be a string")
    else:
        raise BadRecord(f"{key}: must be a string or a list of one assistant message")
    if not text.strip():
        raise BadRecord(f"{key}: the reply is empty")
    return text


def _messages(value: Any, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRecord(f"{key}: must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise BadRecord(f"{key}[{i}]: must be an object with 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(obj: Mapping[str, Any], key: str = "prompt") -> list[Message]:
    value = obj[key]
    if isinstance(value, str):
        system = obj.get("system")
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        prompt = [*head, {"role": "user", "content": value}]
    else:
        prompt = _messages(value, key)
    if prompt[-1]["role"] != "user":
        raise BadRecord(f"{key}[{len(prompt) - 1}].role: a prompt must end with a user turn")
    # A prompt is a conversation waiting for its reply: check it with a placeholder reply.
    validate_conversation(
        [*prompt, {"role": "assistant", "content": "·"}], lambda i, k: f"{key}[{i}].{k}"
    )
    return prompt


def _split_implicit(obj: Mapping[str, Any]) -> tuple[list[Message], str, str]:
    chosen, rejected = _messages(obj["chosen"], "chosen"), _messages(obj["rejected"], "rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise BadRecord(
            "chosen/rejected: without a 'prompt' field both must be the same conversation up "
            "to one final assistant reply each"
        )
    prompt = _prompt({"chosen": chosen[:shared]}, "chosen")
    return prompt, _reply(chosen[-1:], "chosen"), _reply(rejected[-1:], "rejected")


def parse_preference(obj: Any) -> PreferencePair:
    """One raw record in any of the three formats → a validated pair. Raises BadRecord."""
    if not isinstance(obj, Mapping):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise BadRecord(f"{key}: missing (a preference record has prompt, chosen, rejected)")
    if "prompt" in obj:
        prompt = _prompt(obj)
        chosen, rejected = _reply(obj["chosen"], "chosen"), _reply(obj["rejected"], "rejected")
    else:
        prompt, chosen, rejected = _split_implicit(obj)
    if chosen == rejected:
        raise BadRecord("chosen/rejected: the two replies are identical, so they compare nothing")
    meta = obj.get("meta", {})
    if not isinstance(meta, Mapping):
        raise BadRecord(f"meta: must be an object, got {type(meta).__name__}")
    return PreferencePair(prompt, chosen, rejected, dict(meta))


def parse_prompt(obj: Any) -> PromptRecord:
    """One prompt record ({prompt} or {messages}, other fields kept as meta). Raises BadRecord."""
    if not isinstance(obj, Mapping):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    key = "prompt" if "prompt" in obj else "messages" if "messages" in obj else None
    if key is None:
        raise BadRecord("prompt: missing (a prompt record has 'prompt' or 'messages')")
    meta = dict(obj.get("meta") or {})
    meta.update({k: v for k, v in obj.items() if k not in (key, "meta", "system")})
    return PromptRecord(_prompt(obj, key), meta)


# ── reading and writing files ────────────────────────────────────────────────────────────


@dataclass
class Records:
    """What was read from files, and what was skipped."""

    items: list[Any] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def _read(paths: str | Path | Iterable[str | Path], parse, skip_bad: bool, what: str) -> Records:
    out = Records()
    for where, item in parse_files(paths, parse, out.skipped, skip_bad=skip_bad, what=what):
        item.meta.setdefault("origin", where)
        out.items.append(item)
    if not out.items:
        names = [paths] if isinstance(paths, str | Path) else list(paths)
        raise DataError(f"no {what} records in {', '.join(map(str, names))}")
    return out


def read_preferences(
    paths: str | Path | Iterable[str | Path], *, skip_bad: bool = False
) -> Records:
    """Preference pairs from files (type by suffix, format per record)."""
    return _read(paths, parse_preference, skip_bad, "preference")


def read_prompts(paths: str | Path | Iterable[str | Path], *, skip_bad: bool = False) -> Records:
    """Prompt records from files (type by suffix)."""
    return _read(paths, parse_prompt, skip_bad, "prompt")


def write_preferences(pairs: Iterable[PreferencePair], path: str | Path) -> Path:
    """Pairs in conversational form, one JSON object a line (.jsonl) or a list (.json)."""
    path = Path(path)
    records = [p.to_json() for p in pairs]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif path.suffix == ".json":
        text = json.dumps(records, ensure_ascii=False, indent=1)
    else:
        raise DataError(f"{path}: preference pairs are written as .jsonl or .json")
    atomic_write_text(path, text)
    return path


# ── tokens and batches ───────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class EncodedPair:
    chosen: EncodedExample  # prompt + chosen reply; labels on the reply only
    rejected: EncodedExample


def encode_pair(
    pair: PreferencePair,
    tokenizer: Tokenizer,
    template: str | None = None,
    max_length: int | None = None,
) -> EncodedPair:
    """Both sides through the chat template (see data/sft.py); too long: prompt side cut."""
    return EncodedPair(
        *(
            encode_conversation(pair.conversation(which), tokenizer, template, max_length)
            for which in ("chosen", "rejected")
        )
    )


class PairBatches:
    """Endless shuffled batches of pairs; the position (epoch, index) resumes exactly.

    A batch of B pairs holds 2B right-padded rows, the chosen sides first: input_ids,
    labels, attention_mask, and `ref_logps` (2B,) once `reference` holds the reference
    model's sequence log-probabilities of every pair (DPO's precomputed reference)."""

    def __init__(
        self, pairs: Sequence[EncodedPair], batch_size: int, pad_id: int, seed: int = 0
    ) -> None:
        if len(pairs) < batch_size:
            raise DataError(f"{len(pairs)} preference pairs cannot fill one batch of {batch_size}")
        self.pairs, self.batch_size, self.pad_id, self.seed = list(pairs), batch_size, pad_id, seed
        self.epoch, self.index = 0, 0
        self.reference: torch.Tensor | None = None  # (N, 2): chosen, rejected

    def next_batch(self) -> Batch:
        if (self.index + 1) * self.batch_size > len(self.pairs):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pairs))
        picks = order[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return pair_batch([self.pairs[i] for i in picks], self.pad_id, self._reference(picks))

    def _reference(self, picks: np.ndarray) -> torch.Tensor | None:
        if self.reference is None:
            return None
        rows = self.reference[torch.as_tensor(picks)]  # (B, 2)
        return torch.cat([rows[:, 0], rows[:, 1]])  # (2B,) chosen first

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "pairs": len(self)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("pairs", len(self)) != len(self):
            raise CheckpointError(
                f"the saved data position is for {state['pairs']} pairs, this source has "
                f"{len(self)}; resume with the same preference data"
            )
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]

    def __len__(self) -> int:
        return len(self.pairs)


def pair_batch(
    pairs: Sequence[EncodedPair], pad_id: int, reference: torch.Tensor | None = None
) -> Batch:
    """2B right-padded rows, chosen first (see PairBatches)."""
    batch = collate_padded([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if reference is not None:
        batch["ref_logps"] = reference
    return batch


def fixed_pair_batches(pairs: Sequence[EncodedPair], batch_size: int, pad_id: int) -> list[Batch]:
    """Every pair once, in order, `batch_size` pairs a batch (validation)."""
    return [pair_batch(pairs[i : i + batch_size], pad_id) for i in range(0, len(pairs), batch_size)]
