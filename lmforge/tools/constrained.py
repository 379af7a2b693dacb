"""Constrained decoding: a tool call generated under its JSON Schema always parses and validates.

    tools ──► call schema: anyOf, one per tool, {"name": <const>, "<key>": <its parameters>}
          ──► regex (outlines-core's JSON Schema → regex), wrapped in the format's
              opener and closer: "<tool_call>\\n" + call + "\\n</tool_call>"
          ──► Index: the regex's automaton over the tokenizer's vocabulary, token by token
              (each token as the bytes it stands for: byte-level BPE)
          ──► from every state, the fewest tokens that reach the end (reverse BFS)

    at each step, for each row: the tokens allowed in its state whose next state can still
    reach the end within the tokens left (max_new_tokens); at the end, only EOS.

So a call cannot be cut off by the token budget, and everything it emits is a call the
Toolbox accepts. outlines-core (pinned, Rust, no other dependency) builds the regex and
the index; lmforge adds the budget and the logits mask (the `logits_processor` of
`generate`). Its index keeps no way out of a state that may end the text, so every pattern
here has its only end at the very end (a call is the whole constrained span).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import decoders
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.tokenizer import Tokenizer
from lmforge.tools.formats import CallFormat

WHITESPACE = r"[ ]?"  # at most one space between JSON tokens: no room to ramble
REGEX_SPECIALS = set("\\.^$|?*+()[]{}")


def byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character → the byte it stands for (GPT-2)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer: Tokenizer) -> dict[bytes, list[int]]:
    """The bytes each ordinary token stands for (special tokens left out)."""
    if not isinstance(tokenizer.hf.decoder, decoders.ByteLevel):
        raise ConfigError(
            "constrained tool calls need a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2, "
            "SmolLM2, lmforge's own); run this model with constrain: none"
        )
    stand_in = byte_decoder()
    added = tokenizer.hf.get_added_tokens_decoder()
    special = {t.content for t in added.values() if t.special}
    table: dict[bytes, list[int]] = {}
    for text, i in tokenizer.hf.get_vocab(with_added_tokens=True).items():
        if text in special:
            continue
        plain = any(t.content == text for t in added.values())  # e.g. Qwen's <tool_call>
        data = text.encode() if plain else bytes(stand_in[c] for c in text)
        table.setdefault(data, []).append(i)
    return table


def literal(text: str) -> str:
    return "".join("\\n" if c == "\n" else "\\" + c if c in REGEX_SPECIALS else c for c in text)


def call_schema(tools: Sequence[Mapping[str, Any]], key: str = "arguments") -> dict[str, Any]:
    """The JSON Schema of one call to any of `tools` (OpenAI `tools` entries)."""
    options = []
    for spec in tools:
        fn = spec.get("function", spec)
        properties = {"name": {"const": fn["name"]}, key: fn.get("parameters", {"type": "object"})}
        options.append({"type": "object", "properties": properties, "required": ["name", key]})
    if not options:
        raise ConfigError("constrained calls need at least one tool")
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_pattern(tools: Sequence[Mapping[str, Any]], fmt: CallFormat) -> str:
    """The regex of one whole call in `fmt`: opener, the call object, closer."""
    from outlines_core.json_schema import build_regex_from_schema

    schema = json.dumps(call_schema(tools, fmt.key))
    body = build_regex_from_schema(schema, whitespace_pattern=WHITESPACE)
    return literal(fmt.opener) + body + literal(fmt.closer)


@dataclass
class Grammar:
    """A regex's automaton over one vocabulary, with each state's distance to the end."""

    index: Any  # outlines_core.Index
    start: int
    distance: dict[int, int]  # fewest tokens from a state to the end
    transitions: dict[int, dict[int, int]]
    _allowed: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def advance(self, state: int, token: int) -> int:
        nxt = self.transitions.get(state, {}).get(token)
        if nxt is None:
            raise ConfigError(f"token {token} is not allowed here: the grammar was not followed")
        return nxt

    def is_end(self, state: int) -> bool:
        return self.distance.get(state) == 0

    def allowed(self, state: int, budget: int) -> Tensor:
        """Ids allowed in `state` from which the end is at most `budget` further tokens away."""
        if state not in self._allowed:
            moves = self.transitions.get(state, {})
            ids = torch.tensor(list(moves), dtype=torch.long)
            dist = torch.tensor([self.distance.get(s, 1 << 30) for s in moves.values()])
            self._allowed[state] = (ids, dist)
        ids, dist = self._allowed[state]
        return ids[dist <= budget]


_GRAMMARS: dict[tuple[str, str], Grammar] = {}


def compile_grammar(pattern: str, tokenizer: Tokenizer) -> Grammar:
    """The Grammar of `pattern` over `tokenizer`'s vocabulary (cached per both)."""
    key = (tokenizer.fingerprint, pattern)
    if key not in _GRAMMARS:
        from outlines_core import Index, Vocabulary

        eos = tokenizer.vocab_size  # never sampled: lmforge decides when EOS may come
        index = Index(pattern, Vocabulary(eos, token_bytes(tokenizer)))
        moves = {
            s: {t: n for t, n in m.items() if t != eos} for s, m in index.get_transitions().items()
        }
        ends = set(index.get_final_states())
        _GRAMMARS[key] = Grammar(index, index.get_initial_state(), _distances(moves, ends), moves)
    return _GRAMMARS[key]


def _distances(moves: dict[int, dict[int, int]], ends: set[int]) -> dict[int, int]:
    """Reverse breadth-first search from the end states over the state graph."""
    back: dict[int, set[int]] = {}
    for source, targets in moves.items():
        for target in set(targets.values()):
            back.setdefault(target, set()).add(source)
    distance = dict.fromkeys(ends, 0)
    queue = deque(ends)
    while queue:
        state = queue.popleft()
        for prev in back.get(state, ()):
            if prev not in distance:
                distance[prev] = distance[state] + 1
                queue.append(prev)
    return distance


class GrammarConstraint:
    """A `generate` logits processor: every row's new tokens spell a match of the grammar,
    finished within `max_new_tokens`, then EOS."""

    def __init__(self, grammar: Grammar, eos_ids: Sequence[int], max_new_tokens: int) -> None:
        need = grammar.distance.get(grammar.start)
        if need is None or need > max_new_tokens:
            raise ConfigError(
                f"a tool call needs at least {need} tokens here but max_new_tokens is "
                f"{max_new_tokens}",
                fix=f"raise it: {{max_new_tokens={need}}}" if need else "",
            )
        self.grammar, self.max_new = grammar, max_new_tokens
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.rows: dict[int, tuple[int, int]] = {}  # batch index → (state, tokens read)

    def __call__(self, logits: Tensor, rows: list[int], generated: list[list[int]]) -> Tensor:
        mask = torch.full_like(logits, float("-inf"))  # (B', V)
        for i, (row, tokens) in enumerate(zip(rows, generated)):
            state, read = self.rows.get(row, (self.grammar.start, 0))
            for token in tokens[read:]:
                state = self.grammar.advance(state, token)
            self.rows[row] = (state, len(tokens))
            if self.grammar.is_end(state):
                mask[i, self.eos] = 0.0
            else:
                mask[i, self.grammar.allowed(state, self.max_new - len(tokens) - 1)] = 0.0
        return logits + mask
