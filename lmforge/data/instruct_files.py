"""File types of instruction data: raw records in, records in OpenAI messages form out.

    reader (by suffix)                        one RawRecord per record
    .jsonl    one JSON object a line          where = file:LINE
    .json     a list of objects               where = file:LINE the element starts on
    .csv      a header row, then one row      where = file:LINE the row starts on;
              per record (alpaca columns,     messages / conversations / meta cells hold JSON
              or messages as JSON)
    .parquet  one row per record (pyarrow,    where = file:row N
              an optional dependency)

A record that cannot be decoded comes back as a RawRecord with `error` set, so that the
caller decides between failing and skipping; a file that cannot be read at all raises
DataError. Writers emit {messages, meta} per record, atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.atomic import atomic_write, atomic_write_text
from lmforge.data.text import read_utf8
from lmforge.errors import DataError
from lmforge.registry import Registry

if TYPE_CHECKING:
    from lmforge.data.instruct import Conversation

JSON_COLUMNS = ("messages", "conversations", "meta")  # CSV/Parquet cells holding JSON


@dataclass(frozen=True)
class RawRecord:
    where: str  # file:line (file:row N for Parquet)
    value: Any = None  # the decoded record
    error: str | None = None  # why it could not be decoded (then value is None)
    text: str = ""  # the source text of a record that could not be decoded


FileReader = Callable[[Path], Iterator[RawRecord]]
FileWriter = Callable[[Sequence["Conversation"], Path], None]
FILE_READERS: Registry[FileReader] = Registry("instruction file type")
FILE_WRITERS: Registry[FileWriter] = Registry("instruction file type")


def _text(path: Path) -> str:
    text = read_utf8(path)  # raises DataError naming the byte offset if not UTF-8
    assert text is not None
    return text


# ── readers ──────────────────────────────────────────────────────────────────────────────


@FILE_READERS.register(".jsonl")
def read_jsonl(path: Path) -> Iterator[RawRecord]:
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends unescaped.
    for n, line in enumerate(_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield RawRecord(f"{path}:{n}", json.loads(line))
        except json.JSONDecodeError as e:
            error = f"malformed JSON ({e.msg} at column {e.colno})"
            yield RawRecord(f"{path}:{n}", error=error, text=line)


@FILE_READERS.register(".json")
def read_json(path: Path) -> Iterator[RawRecord]:
    """A JSON list, decoded element by element so each is named by the line it starts on."""
    text, decoder = _text(path), json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise DataError(f"{path}: a .json instruction file must hold a list of records")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}); nothing "
                "after it can be read: fix the file, or use .jsonl (one record a line)"
            ) from None
        yield RawRecord(f"{path}:{line}", value)


def _decode_cells(where: str, row: Mapping[str, Any]) -> RawRecord:
    """Drop missing cells and empty JSON ones; decode the JSON ones (messages, conversations,
    meta). An empty text cell stays: an empty `output` must be reported as such."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or (key in JSON_COLUMNS and value == ""):
            continue
        if key in JSON_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                return RawRecord(where, error=f"{key}: the cell is not valid JSON ({e.msg})")
        out[key] = value
    return RawRecord(where, out)


@FILE_READERS.register(".csv")
def read_csv(path: Path) -> Iterator[RawRecord]:
    """A header row naming the columns (instruction,input,output or messages), then records."""
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    start = 2  # the first record follows the header line
    for row in reader:
        if None in row:  # DictReader files surplus cells under the key None
            yield RawRecord(f"{path}:{start}", error="the row has more cells than the header")
        else:
            yield _decode_cells(f"{path}:{start}", row)
        start = reader.line_num + 1  # a quoted cell may span lines


@FILE_READERS.register(".parquet")
def read_parquet(path: Path) -> Iterator[RawRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow: pip install 'lmforge[data]'"
        ) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # ArrowInvalid, OSError, ... depending on the damage
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    for n, row in enumerate(rows, start=1):
        yield _decode_cells(f"{path}:row {n}", row)


def reader_for(path: Path) -> FileReader:
    if path.suffix not in FILE_READERS:
        raise DataError(
            f"{path}: unknown instruction file type {path.suffix!r}; "
            f"use one of {', '.join(FILE_READERS.names())}"
        )
    return FILE_READERS.get(path.suffix)


# ── writers ──────────────────────────────────────────────────────────────────────────────


@FILE_WRITERS.register(".jsonl")
def write_jsonl(records: Sequence[Conversation], path: Path) -> None:
    lines = (json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in records)
    atomic_write_text(path, "".join(lines))


@FILE_WRITERS.register(".json")
def write_json(records: Sequence[Conversation], path: Path) -> None:
    atomic_write_text(
        path, json.dumps([c.to_json() for c in records], ensure_ascii=False, indent=1)
    )


@FILE_WRITERS.register(".csv")
def write_csv(records: Sequence[Conversation], path: Path) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["messages", "meta"])
    for c in records:
        writer.writerow([json.dumps(c.messages, ensure_ascii=False), json.dumps(c.meta)])
    atomic_write_text(path, buffer.getvalue())


@FILE_WRITERS.register(".parquet")
def write_parquet(records: Sequence[Conversation], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: writing Parquet needs pyarrow: pip install 'lmforge[data]'"
        ) from None
    # Messages as list<struct<role, content>>; meta varies per record, so it is a JSON cell.
    table = pa.table(
        {
            "messages": [c.messages for c in records],
            "meta": [json.dumps(c.meta, ensure_ascii=False) for c in records],
        }
    )
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def writer_for(path: Path) -> FileWriter:
    if path.suffix not in FILE_WRITERS:
        raise DataError(
            f"{path}: cannot write {path.suffix!r} files; use one of {FILE_WRITERS.names()}"
        )
    return FILE_WRITERS.get(path.suffix)
