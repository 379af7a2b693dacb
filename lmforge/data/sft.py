"""Supervised fine-tuning data: conversations → token ids with loss on assistant tokens only.

The conversation is rendered once, whole, with the chat template the model is prompted with
(its own, else a built-in one: see `lmforge.chat.chat_template_for`), and tokenized. Where
each assistant message lies is found by rendering prefixes of the conversation: the tokens
the i-th assistant message adds to the rendering are its span.

    render(messages[:i], generation prompt)  "...<|im_start|>assistant\\n"      span starts
    render(messages[:i+1])                   "...<|im_start|>assistant\\nHi<|im_end|>"  ends
    render(messages)                         the text that is tokenized and trained on

    ids     <|im_start|> user \\n Hi <|im_end|> \\n <|im_start|> assistant \\n Hello <|im_end|> \\n
    labels  -100 ...                                                   Hello <|im_end|>  -100

A span is located in tokens, not characters: its start is the number of leading tokens
that the rendered prefix shares with the whole (so a token that straddles the boundary
belongs to the reply, which must produce it). The span includes the end-of-turn token
(`<|im_end|>`, eos), so the model learns to stop; whitespace the template writes after
that token is not trained on. For a format without markers ("plain") the reply's closing
newline is its end of turn and is trained on.

Too long? The prompt side gives way, never the example: the earliest user/assistant
exchanges are dropped (a system message stays), then the first user message is cut from
its start, and as a last resort only the last `max_length` tokens are kept. Each case is
counted (`Truncation`) and `encode_conversations` warns with the counts.

Packing lays several examples end to end in one row, with positions restarting at 0 and a
block-diagonal causal mask, so no token attends across examples and the loss of a packed
row equals the loss of its examples run one by one:

    tokens    a a a b b c c c c ·        segment_ids  1 1 1 2 2 3 3 3 3 0
    position  0 1 2 0 1 0 1 2 3 0        mask         ■ · · · · · · · · ·   (row = query)
                                                      ■ ■ · · · · · · · ·
                                                      ■ ■ ■ · · · · · · ·
                                                      · · · ■ · · · · · ·
                                                      · · · ■ ■ · · · · ·  ...
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lmforge.chat import chat_format, chat_stop_tokens
from lmforge.data.instruct import BadRecord, Conversation, validate_conversation
from lmforge.data.loader import Batch, rank_rows
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.model.attention import packed_attention_mask
from lmforge.model.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer

TRUNCATIONS = ("turns", "prompt", "tail")  # earliest turns dropped; first user cut; last tokens


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # input_ids on assistant tokens, IGNORE_INDEX (-100) elsewhere
    truncated: str | None = None  # how it was shortened (one of TRUNCATIONS), None if not

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class Truncation:
    """What `encode_conversations` had to shorten to fit `max_length`."""

    examples: int = 0  # conversations encoded
    counts: Counter[str] = field(default_factory=Counter)  # truncation kind → examples

    @property
    def truncated(self) -> int:
        return sum(self.counts.values())

    def summary(self, max_length: int | None) -> str:
        kinds = {
            "turns": "lost their earliest exchanges",
            "prompt": "had the first user message cut",
            "tail": "kept only their last tokens",
        }
        detail = ", ".join(f"{self.counts[k]} {kinds[k]}" for k in TRUNCATIONS if self.counts[k])
        return (
            f"{self.truncated} of {self.examples} examples were longer than "
            f"max_length={max_length} and were truncated from the prompt side ({detail})"
        )


def _messages(conv: Conversation | Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    messages = conv.messages if isinstance(conv, Conversation) else conv
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        validate_conversation(messages)
    except BadRecord as e:
        raise DataError(f"cannot train on this conversation: {e}") from None
    return messages


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _render(
    messages: list[dict[str, str]], tokenizer: Tokenizer, template: str | None, gen: bool
) -> str:
    return chat_format(messages, tokenizer, add_generation_prompt=gen, template=template)


def _span_texts(
    messages: list[dict[str, str]], tokenizer: Tokenizer, template: str | None
) -> tuple[str, list[str]]:
    """The whole rendering and, per assistant message, the renderings ending before/after it."""
    full = _render(messages, tokenizer, template, gen=False)
    ends = [tokenizer.id_to_token(i) or "" for i in chat_stop_tokens(tokenizer)]
    bounds = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _render(messages[:i], tokenizer, template, gen=True)
        end = _render(messages[: i + 1], tokenizer, template, gen=False)
        if any(t and end.rstrip().endswith(t) for t in ends):
            end = end.rstrip()  # nothing after the end-of-turn token is trained on
        for text in (start, end):
            if not full.startswith(text):
                raise ConfigError(
                    f"the chat template does not render conversations prefix by prefix (at "
                    f"messages[{i}]), so assistant tokens cannot be located; train with a "
                    "built-in template (chatml, plain) on a tokenizer without its own template"
                )
        bounds += [start, end]
    return full, bounds


def _encode_full(
    messages: list[dict[str, str]], tokenizer: Tokenizer, template: str | None
) -> EncodedExample:
    full, bounds = _span_texts(messages, tokenizer, template)
    ids = tokenizer.encode(full)
    cuts = [_common_prefix(ids, b) for b in tokenizer.encode_batch(bounds)]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in zip(cuts[::2], cuts[1::2]):
        labels[start:end] = ids[start:end]
    return EncodedExample(ids, labels)


def _cut_first_user(
    messages: list[dict[str, str]], head: int, excess: int, tokenizer: Tokenizer
) -> list[dict[str, str]] | None:
    """The messages with the first user message's first `excess` tokens removed (None when
    that would leave nothing of it)."""
    user = tokenizer.encode(messages[head]["content"])
    if excess >= len(user):
        return None
    # A cut inside a multi-byte character decodes to U+FFFD; drop those leftovers.
    rest = tokenizer.decode(user[excess:]).lstrip("\ufffd")
    cut = [dict(m) for m in messages]
    cut[head]["content"] = rest
    return cut


def _truncate(
    messages: list[dict[str, str]],
    tokenizer: Tokenizer,
    template: str | None,
    max_length: int,
    encoded: EncodedExample,
) -> EncodedExample:
    head = 1 if messages[0]["role"] == "system" else 0
    while len(messages) - head > 2:  # 1. drop the earliest exchange, keep the last one
        messages = messages[:head] + messages[head + 2 :]
        encoded = _encode_full(messages, tokenizer, template)
        if len(encoded) <= max_length:
            return dataclasses.replace(encoded, truncated="turns")
    for _ in range(8):  # 2. cut the first user message; re-tokenizing may shift a token
        cut = _cut_first_user(messages, head, len(encoded) - max_length, tokenizer)
        if cut is None:
            break
        messages, encoded = cut, _encode_full(cut, tokenizer, template)
        if len(encoded) <= max_length:
            return dataclasses.replace(encoded, truncated="prompt")
    # 3. the reply alone does not fit: keep the last max_length tokens (mostly reply).
    ids, labels = encoded.input_ids[-max_length:], encoded.labels[-max_length:]
    return EncodedExample(ids, labels, truncated="tail")


def encode_conversation(
    conv: Conversation | Sequence[Mapping[str, str]],
    tokenizer: Tokenizer,
    template: str | None = None,
    max_length: int | None = None,
) -> EncodedExample:
    """Token ids and labels of one conversation (loss on assistant tokens only).

    `template` is a registered chat template name or Jinja source, used when the tokenizer
    has no template of its own (default ChatML). Longer than `max_length`: truncated from
    the prompt side, see the module docstring; `.truncated` says how.
    """
    messages = _messages(conv)
    encoded = _encode_full(messages, tokenizer, template)
    if max_length is None or len(encoded) <= max_length:
        return encoded
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    return _truncate(messages, tokenizer, template, max_length, encoded)


def encode_conversations(
    convs: Iterable[Conversation | Sequence[Mapping[str, str]]],
    tokenizer: Tokenizer,
    template: str | None = None,
    max_length: int | None = None,
) -> tuple[list[EncodedExample], Truncation]:
    """Encode every conversation; warn once with the counts if any had to be truncated."""
    report = Truncation()
    out = []
    for conv in convs:
        example = encode_conversation(conv, tokenizer, template, max_length)
        report.examples += 1
        if example.truncated:
            report.counts[example.truncated] += 1
        out.append(example)
    if report.truncated:
        warnings.warn(report.summary(max_length), stacklevel=2)
    return out, report


# ── packing and batches ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class PackedRow:
    """Several examples laid end to end in one row of at most max_length tokens."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]  # 0, 1, ... restarting at each example
    segment_ids: list[int]  # 1, 2, ... one per example (0 is reserved for padding)


def pack_examples(examples: Iterable[EncodedExample], max_length: int) -> list[PackedRow]:
    """Pack examples in the given order, starting a new row when the next does not fit."""
    rows: list[PackedRow] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    for ex in examples:
        if len(ex) > max_length:
            raise DataError(
                f"an example of {len(ex)} tokens cannot be packed into rows of {max_length}; "
                "encode with max_length to truncate it"
            )
        if len(ids) + len(ex) > max_length:
            rows.append(PackedRow(ids, labels, positions, segments))
            ids, labels, positions, segments = [], [], [], []
        segment = (segments[-1] if segments else 0) + 1
        ids += ex.input_ids
        # The first token of an example is never predicted from the one before it.
        labels += [IGNORE_INDEX] + ex.labels[1:]
        positions += range(len(ex))
        segments += [segment] * len(ex)
    if ids:
        rows.append(PackedRow(ids, labels, positions, segments))
    return rows


def _filled(rows: Sequence[Sequence[int]], width: int, fill: int) -> Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate_padded(examples: Sequence[EncodedExample], pad_id: int) -> Batch:
    """One example per row, right-padded to the longest: input_ids, labels, attention_mask."""
    T = max(len(ex) for ex in examples)
    return {
        "input_ids": _filled([ex.input_ids for ex in examples], T, pad_id),
        "labels": _filled([ex.labels for ex in examples], T, IGNORE_INDEX),
        "attention_mask": _filled([[1] * len(ex) for ex in examples], T, 0),
    }


def collate_packed(
    rows: Sequence[PackedRow], pad_id: int, max_length: int, mask_dtype: torch.dtype | None = None
) -> Batch:
    """Packed rows, right-padded to max_length: input_ids, labels, position_ids and the
    (B, 1, T, T) block-diagonal causal attention_mask."""
    segments = _filled([r.segment_ids for r in rows], max_length, 0)
    return {
        "input_ids": _filled([r.input_ids for r in rows], max_length, pad_id),
        "labels": _filled([r.labels for r in rows], max_length, IGNORE_INDEX),
        "position_ids": _filled([r.position_ids for r in rows], max_length, 0),
        "attention_mask": packed_attention_mask(segments, mask_dtype),
    }


class SFTBatches:
    """Endless shuffled SFT batches; the position (epoch, index) resumes exactly.

    Unpacked: `batch_size` examples per batch, right-padded to the longest. Packed: each
    epoch's permutation of the examples is packed into rows of `max_length` tokens (see
    `pack_examples`) and the rows are served `batch_size` at a time; rows left over at the
    end of an epoch are dropped for that epoch only (the next one packs every example anew).
    """

    def __init__(
        self,
        examples: Sequence[EncodedExample],
        batch_size: int,
        pad_id: int,
        *,
        pack: bool = False,
        max_length: int | None = None,
        seed: int = 0,
        mask_dtype: torch.dtype | None = None,
    ) -> None:
        if pack and max_length is None:
            raise ConfigError("packing needs max_length, the length of a packed row")
        self.examples, self.batch_size, self.pad_id = list(examples), batch_size, pad_id
        self.pack, self.max_length, self.seed, self.mask_dtype = pack, max_length, seed, mask_dtype
        self.epoch, self.index = 0, 0
        self.part = slice(0, batch_size)  # the rows of each batch this process trains on
        self._rows: tuple[int, list[PackedRow]] | None = None  # (epoch, packed rows) cache
        if self._units() < batch_size:
            what = "packed rows" if pack else "examples"
            raise DataError(f"{self._units()} {what} cannot fill one batch of {batch_size}")

    def shard(self, rank: int, world: int) -> None:
        """Serve rank `rank` of `world` its rows of every (global) batch."""
        self.part = rank_rows(self.batch_size, rank, world)

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def _packed(self) -> list[PackedRow]:
        if self._rows is None or self._rows[0] != self.epoch:
            order = self._order()
            rows = pack_examples((self.examples[i] for i in order), self.max_length)
            self._rows = (self.epoch, rows)
        return self._rows[1]

    def _units(self) -> int:
        """Rows (packed) or examples in this epoch."""
        return len(self._packed()) if self.pack else len(self.examples)

    def next_batch(self) -> Batch:
        if (self.index + 1) * self.batch_size > self._units():
            self.epoch, self.index = self.epoch + 1, 0
        picks = slice(self.index * self.batch_size, (self.index + 1) * self.batch_size)
        self.index += 1
        if self.pack:
            rows = self._packed()[picks]
            if len(rows) < self.batch_size:
                raise DataError(f"epoch {self.epoch} packs fewer than {self.batch_size} rows")
            return collate_packed(rows[self.part], self.pad_id, self.max_length, self.mask_dtype)
        chosen = self._order()[picks][self.part]
        return collate_padded([self.examples[i] for i in chosen], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "pack": self.pack}

    def load_state_dict(self, state: dict) -> None:
        if bool(state.get("pack", False)) != self.pack:
            raise CheckpointError(
                f"the saved data position is for pack={state.get('pack')}, this source has "
                f"pack={self.pack}; resume with the same data settings"
            )
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]
