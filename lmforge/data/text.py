"""Raw text in: files, folders and JSONL, each document remembering where it came from.

    source ─┬─ file.txt / .md / .rst / anything else  → one document per file
            ├─ file.jsonl                             → one document per line {"text": ...}
            └─ folder                                 → every *.txt *.md *.rst *.jsonl under it,
                                                        sorted, each read as above

Bad input is reported with its place (file, byte offset or line) and the way
out; with `skip_bad=True` a bad file or line is skipped and counted instead, and
the returned DocumentSet carries the counts so the caller can report them.
Blank documents are dropped silently: they carry no tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")
SKIP_HINT = "pass {skip_bad=true} to skip it and go on"  # a fix (lmforge.errors)


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # the file it was read from
    line: int | None = None  # 1-based line for JSONL (and line-per-document corpora)

    @property
    def origin(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Skipped:
    origin: str  # file, or file:line
    reason: str
    record: Any = None  # what was read there (the decoded record, or the line as text)


@dataclass
class DocumentSet:
    """The documents of a corpus plus what was skipped on the way in."""

    documents: list[Document] = field(default_factory=list)
    skipped_files: list[Skipped] = field(default_factory=list)
    skipped_lines: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __getitem__(self, i: int) -> Document:
        return self.documents[i]

    def texts(self) -> Iterator[str]:
        return (d.text for d in self.documents)

    @property
    def num_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    def extend(self, other: DocumentSet) -> None:
        self.documents.extend(other.documents)
        self.skipped_files.extend(other.skipped_files)
        self.skipped_lines.extend(other.skipped_lines)

    def summary(self) -> str:
        """One line for logs, e.g. '42 documents, 5,301,212 characters; skipped 1 file'."""
        s = f"{len(self.documents):,} documents, {self.num_chars:,} characters"
        if self.skipped_files or self.skipped_lines:
            s += f"; skipped {len(self.skipped_files)} file(s), {len(self.skipped_lines)} line(s)"
        return s


def read_documents(source: str | Path, *, skip_bad: bool = False) -> DocumentSet:
    """Read a text file, a JSONL file or a folder of them into a non-empty DocumentSet."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {path} does not exist; give a file or folder of text")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            kinds = " ".join(f"*{s}" for s in TEXT_SUFFIXES)
            raise DataError(f"folder {path} holds no text files ({kinds})")
    else:
        files = [path]
    return read_files(files, skip_bad=skip_bad, name=str(path))


def read_files(
    files: Iterable[Path], *, skip_bad: bool = False, name: str | None = None
) -> DocumentSet:
    """Read the given files (JSONL by suffix, else whole-file text); error if all are blank."""
    files = list(files)
    out = DocumentSet()
    for f in files:
        text = read_utf8(f, skip_bad=skip_bad, skipped=out.skipped_files)
        if text is None:
            continue
        if f.suffix == ".jsonl":
            out.extend(_parse_jsonl(text, f, skip_bad))
        elif text.strip():
            out.documents.append(Document(text, str(f)))
    if not out.documents:
        where = name or ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        skipped = ""
        if out.skipped_files or out.skipped_lines:
            skipped = (
                f" ({len(out.skipped_files)} file(s) and {len(out.skipped_lines)} line(s) "
                "were skipped as bad)"
            )
        raise DataError(f"corpus {where} is empty: no document has any non-blank text{skipped}")
    return out


def read_utf8(
    path: Path, *, skip_bad: bool = False, skipped: list[Skipped] | None = None
) -> str | None:
    """The file's text; None if it is not UTF-8 and `skip_bad` (then it goes into `skipped`)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        reason = f"not UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start}"
        if skip_bad:
            if skipped is not None:
                skipped.append(Skipped(str(path), reason))
            return None
        raise DataError(
            f"{path} is {reason}",
            fix=f"convert it to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`), or {SKIP_HINT}",
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not text


def _parse_jsonl(text: str, path: Path, skip_bad: bool) -> DocumentSet:
    out = DocumentSet()
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends unescaped.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            doc = _jsonl_text(line)
        except ValueError as e:
            if skip_bad:
                out.skipped_lines.append(Skipped(f"{path}:{lineno}", str(e)))
                continue
            raise DataError(
                f"{path}:{lineno}: {e}; each line must be a JSON object with a string "
                f'"text" field, e.g. {{"text": "..."}}',
                fix=f"fix the line or {SKIP_HINT}",
            ) from None
        if doc.strip():
            out.documents.append(Document(doc, str(path), lineno))
    return out


def _jsonl_text(line: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise ValueError(f'no "text" field (fields: {", ".join(sorted(obj)) or "none"})')
    if not isinstance(obj["text"], str):
        raise ValueError(f'"text" is {type(obj["text"]).__name__}, not a string')
    return obj["text"]
