"""Instruction data: one conversation record, three record formats, four file types.

Every instruction example becomes a `Conversation` — OpenAI-style messages whose roles run
system? user assistant (user assistant)* — plus `meta`, where its provenance lives:

    .json  (a list)   ─┐                 ┌─ alpaca    {instruction, input?, output, system?}
    .jsonl (a line)    ├─ FILE_READERS ─►├─ sharegpt  {conversations: [{from, value}], system?}
    .csv   (a row)     │   raw records   └─ openai    {messages: [{role, content}], meta?}
    .parquet (a row)  ─┘                       │  FORMATS (detected per record, or forced)
                                               ▼
                              Conversation(messages, meta) ──► write_instructions (.jsonl ...)

A bad record raises DataError naming its place (`file:line`, `file:row N` for Parquet) and
the field at fault in the source's own terms (`conversations[2].from`, `output`); with
`skip_bad` it is skipped and counted instead. Exact duplicates (same messages) are removed
by `deduplicate`; `stats` counts records, turns and characters/tokens per role.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.data.instruct_files import reader_for, writer_for
from lmforge.data.text import Skipped
from lmforge.errors import DataError
from lmforge.registry import Registry

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
SKIP_HINT = "fix the record, or pass {skip_bad=true} to skip it and go on"  # a fix

Message = dict[str, str]
FieldName = Callable[[int, str], str]  # (message index, "role"|"content") -> field in the source


class BadRecord(ValueError):
    """One record is malformed; the message names the field (the caller adds the place)."""


@dataclass
class Conversation:
    """One instruction example: alternating user/assistant messages and its provenance."""

    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"messages": [dict(m) for m in self.messages], "meta": dict(self.meta)}

    @property
    def key(self) -> str:
        """Identity for exact-duplicate removal: the messages only, never the provenance."""
        return json.dumps(self.messages, ensure_ascii=False, sort_keys=True)


def from_alpaca(
    instruction: str,
    output: str,
    input: str = "",
    system: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Conversation:
    """An Alpaca triple as a conversation: the user turn is the instruction, then the input."""
    user = instruction.strip() if not input.strip() else f"{instruction.strip()}\n\n{input.strip()}"
    head = [{"role": "system", "content": system}] if system else []
    messages = head + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Conversation(messages, dict(meta or {}))


# ── validation ───────────────────────────────────────────────────────────────────────────


def _messages_field(i: int, key: str) -> str:
    return f"messages[{i}].{key}"


def validate_conversation(messages: Sequence[Message], name: FieldName = _messages_field) -> None:
    """Raise BadRecord unless roles run system? user assistant (user assistant)* and no user
    or assistant turn is empty. `name` turns (index, key) into the source's field name."""
    if not messages:
        raise BadRecord(f"{name(0, 'role').split('[')[0]}: the conversation has no messages")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise BadRecord(f"{name(i, 'role')}: {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            kind = type(m["content"]).__name__
            raise BadRecord(f"{name(i, 'content')}: must be a string, got {kind}")
    head = 1 if messages[0]["role"] == "system" else 0
    for i in range(head, len(messages)):
        role, want = messages[i]["role"], ("user", "assistant")[(i - head) % 2]
        if role == "system":
            raise BadRecord(f"{name(i, 'role')}: a system message may only come first")
        if role != want:
            raise BadRecord(
                f"{name(i, 'role')}: expected {want!r}, got {role!r} (roles must alternate "
                "user/assistant after an optional first system message)"
            )
        if not messages[i]["content"].strip():
            raise BadRecord(f"{name(i, 'content')}: the {role} turn is empty")
    if len(messages) == head or messages[-1]["role"] != "assistant":
        last = len(messages) - 1
        raise BadRecord(f"{name(last, 'role')}: the conversation must end with an assistant turn")


def check_conversation(conv: Conversation, where: str = "conversation") -> None:
    """validate_conversation, raising DataError that names `where`."""
    try:
        validate_conversation(conv.messages)
    except BadRecord as e:
        raise DataError(f"{where}: {e}") from None


# ── record formats ───────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class RecordFormat:
    keys: tuple[str, ...]  # a record holding all of these fields is in this format
    parse: Callable[[Mapping[str, Any]], tuple[list[Message], FieldName]]
    doc: str


FORMATS: Registry[RecordFormat] = Registry("instruction format")


def _string(obj: Mapping[str, Any], key: str, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in obj else f"a {type(value).__name__}"
        raise BadRecord(f"{key}: must be a string, but it is {got}")
    return value


def _parse_alpaca(obj: Mapping[str, Any]) -> tuple[list[Message], FieldName]:
    instruction, output = _string(obj, "instruction"), _string(obj, "output")
    conv = from_alpaca(
        instruction, output, _string(obj, "input", True), _string(obj, "system", True) or None
    )
    fields = {"system": "system", "user": "instruction", "assistant": "output"}
    return conv.messages, lambda i, key: fields[conv.messages[i]["role"]]


SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user"} | {
    name: "assistant" for name in ("gpt", "assistant", "chatgpt", "model", "bard", "bing")
}


def _parse_sharegpt(obj: Mapping[str, Any]) -> tuple[list[Message], FieldName]:
    turns = obj["conversations"]
    if not isinstance(turns, list):
        raise BadRecord("conversations: must be a list of {from, value} objects")
    system = _string(obj, "system", optional=True)
    messages = [{"role": "system", "content": system}] if system else []
    offset = len(messages)
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise BadRecord(f"conversations[{i}]: must be an object with 'from' and 'value'")
        who = turn.get("from")
        if not isinstance(who, str) or who not in SHAREGPT_ROLES:
            raise BadRecord(
                f"conversations[{i}].from: {who!r} is not one of human, gpt, system "
                "(user and assistant are accepted too)"
            )
        messages.append({"role": SHAREGPT_ROLES[who], "content": turn.get("value")})
    keys = {"role": "from", "content": "value"}

    def name(i: int, key: str) -> str:
        return "system" if i < offset else f"conversations[{i - offset}].{keys[key]}"

    return messages, name


def _parse_openai(obj: Mapping[str, Any]) -> tuple[list[Message], FieldName]:
    raw = obj["messages"]
    if not isinstance(raw, list):
        raise BadRecord("messages: must be a list of {role, content} objects")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise BadRecord(f"messages[{i}]: must be an object with 'role' and 'content'")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages, _messages_field


FORMATS.add("openai", RecordFormat(("messages",), _parse_openai, "{messages: [{role, content}]}"))
FORMATS.add("sharegpt", RecordFormat(("conversations",), _parse_sharegpt, "{conversations}"))
FORMATS.add("alpaca", RecordFormat(("instruction", "output"), _parse_alpaca, "{instruction...}"))


def detect_format(obj: Mapping[str, Any]) -> str:
    """The registered format whose fields the record holds (openai, sharegpt, alpaca)."""
    for name in ("openai", "sharegpt", "alpaca"):  # most specific first
        if all(k in obj for k in FORMATS.get(name).keys):
            return name
    fields = ", ".join(sorted(obj)) or "none"
    raise BadRecord(
        f"cannot tell the format from the fields ({fields}); expected 'messages' (openai), "
        "'conversations' (sharegpt) or 'instruction' and 'output' (alpaca)"
    )


def parse_record(obj: Any, format: str | None = None) -> tuple[Conversation, str]:
    """One raw record → (validated Conversation, its format name). Raises BadRecord."""
    if not isinstance(obj, Mapping):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    name = format or detect_format(obj)
    spec = FORMATS.get(name)
    missing = [k for k in spec.keys if k not in obj]
    if missing:
        raise BadRecord(f"{missing[0]}: missing (the {name} format needs {', '.join(spec.keys)})")
    messages, field_name = spec.parse(obj)
    validate_conversation(messages, field_name)
    meta = obj.get("meta", {})
    if not isinstance(meta, Mapping):
        raise BadRecord(f"meta: must be an object, got {type(meta).__name__}")
    return Conversation(messages, dict(meta)), name


# ── reading many files ───────────────────────────────────────────────────────────────────


@dataclass
class InstructionSet:
    """Conversations read from files, with what was skipped and the formats seen."""

    records: list[Conversation] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # exact duplicates removed (by `read_instructions(dedup=True)`)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Conversation]:
        return iter(self.records)


def parse_files(
    paths: str | Path | Iterable[str | Path],
    parse: Callable[[Any], Any],
    skipped: list[Skipped],
    *,
    skip_bad: bool = False,
    what: str = "instruction",
) -> Iterator[tuple[str, Any]]:
    """(file:line, parse(record)) for every record of the files (type by suffix). A record
    `parse` rejects with BadRecord raises DataError naming its place, or with skip_bad is
    appended to `skipped`."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{what} file {path} does not exist")
        empty = True
        for raw in reader_for(path)(path):
            empty = False
            try:
                if raw.error is not None:
                    raise BadRecord(raw.error)
                item = parse(raw.value)
            except BadRecord as e:
                if not skip_bad:
                    raise DataError(f"{raw.where}: {e}", fix=SKIP_HINT) from None
                skipped.append(Skipped(raw.where, str(e), raw.value or raw.text or None))
                continue
            yield raw.where, item
        if empty:
            raise DataError(f"{what} file {path} is empty: it holds no records")


def read_instructions(
    paths: str | Path | Iterable[str | Path],
    *,
    format: str | None = None,
    skip_bad: bool = False,
    dedup: bool = False,
) -> InstructionSet:
    """Read instruction files (type by suffix; format per record, or `format` for all).

    A record without its own `meta` gets `{source: "import", origin: file:line, format}`."""
    if format is not None:
        FORMATS.get(format)  # an unknown name fails before any file is read
    out = InstructionSet()
    parsed = parse_files(paths, lambda v: parse_record(v, format), out.skipped, skip_bad=skip_bad)
    for where, (conv, name) in parsed:
        conv.meta = conv.meta or {"source": "import", "origin": where, "format": name}
        out.records.append(conv)
        out.formats[name] += 1
    if dedup:
        out.records, out.duplicates = deduplicate(out.records)
    return out


def deduplicate(records: Iterable[Conversation]) -> tuple[list[Conversation], int]:
    """Keep the first of each group of records with identical messages: (kept, removed)."""
    records = list(records)
    seen: set[str] = set()
    kept = []
    for conv in records:
        if conv.key not in seen:
            seen.add(conv.key)
            kept.append(conv)
    return kept, len(records) - len(kept)


def write_instructions(records: Iterable[Conversation], path: str | Path) -> Path:
    """Write records in OpenAI messages form ({messages, meta}), atomically; type by suffix
    (.jsonl, .json, .csv, .parquet)."""
    path = Path(path)
    writer_for(path)(list(records), path)
    return path


# ── statistics ───────────────────────────────────────────────────────────────────────────


def stats(
    records: Sequence[Conversation] | InstructionSet, tokenizer: Tokenizer | None = None
) -> dict[str, Any]:
    """Counts over a set of conversations (exact, JSON-able).

    records, messages, turns (assistant replies), multi_turn (records with more than one),
    with_system, duplicates (records whose messages equal an earlier record's), per role:
    messages, chars and — with a tokenizer — tokens of the contents (no template); and for
    an InstructionSet the formats read and the records skipped."""
    convs = list(records)
    roles: dict[str, dict[str, int]] = {}
    for conv in convs:
        for m in conv.messages:
            row = roles.setdefault(m["role"], {"messages": 0, "chars": 0})
            row["messages"] += 1
            row["chars"] += len(m["content"])
            if tokenizer is not None:
                row["tokens"] = row.get("tokens", 0) + len(tokenizer.encode(m["content"]))
    replies = [sum(m["role"] == "assistant" for m in c.messages) for c in convs]
    out: dict[str, Any] = {
        "records": len(convs),
        "messages": sum(len(c.messages) for c in convs),
        "turns": sum(replies),
        "multi_turn": sum(n > 1 for n in replies),
        "with_system": sum(c.messages[0]["role"] == "system" for c in convs),
        "duplicates": deduplicate(convs)[1],
        "roles": {r: roles[r] for r in ROLES if r in roles},
    }
    if isinstance(records, InstructionSet):
        out["formats"] = dict(sorted(records.formats.items()))
        out["skipped"] = len(records.skipped)
    return out


def format_stats(figures: Mapping[str, Any]) -> str:
    """`stats` as a few aligned lines for the terminal."""
    lines = [f"{k:12} {figures[k]:,}" for k in ("records", "messages", "turns") if k in figures]
    lines += [f"{k:12} {figures[k]:,}" for k in ("multi_turn", "with_system", "duplicates")]
    for key in ("formats", "skipped"):
        if key in figures:
            lines.append(f"{key:12} {figures[key]}")
    for role, row in figures["roles"].items():
        n = row["messages"]
        per = f"{row['chars'] / n:,.1f} chars" + (
            f", {row['tokens'] / n:,.1f} tokens" if "tokens" in row else ""
        )
        total = f"{row['chars']:,} chars" + (
            f", {row['tokens']:,} tokens" if "tokens" in row else ""
        )
        lines.append(f"{role:12} {n:,} messages, {total} (mean {per})")
    return "\n".join(lines)
