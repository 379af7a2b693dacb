"""Chunks: pieces of a document small enough to retrieve and to quote, with exact spans.

A chunk is `document.text[start:end]`, and remembers its source, title, the heading it sits
under and its lines (1-based, inclusive), so an answer can cite `faq/general.rst.txt:120-134`.

Sizes count *units*: a word (letters and digits), one CJK character, or one other
non-space symbol. A unit is close to a model token for English and exactly one character
for Chinese, so one size serves both without a tokenizer:

    by_tokens    windows of `size` units, each starting `size - overlap` units after the last
    by_headings  one section per heading (Markdown `#`, reStructuredText titles); a section
                 longer than `size` units is cut by_tokens inside it

    text   "## Install\\n\\npip install lmforge ..."
    units   ^^ ^^^^^^^   ^^^ ^^^^^^^ ^^^^^^^
    chunk  [start ............................ end)   line_start..line_end
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.errors import ConfigError
from lmforge.knowledge.documents import HEADINGS, Document
from lmforge.registry import Registry
from lmforge.text_metrics import CJK

UNIT = re.compile(rf"[{CJK}]|[^\W{CJK}]+|[^\s\w]", re.UNICODE)


@dataclass(frozen=True)
class Chunk:
    id: str  # hash of source, span and text: stable across runs
    source: str  # the document's path
    title: str  # the document's title
    section: str  # the heading the chunk sits under ("" before the first one)
    start: int  # first character, an offset into the document's text
    end: int  # one past the last character
    line_start: int  # first line (1-based)
    line_end: int  # last line (inclusive)
    text: str  # document.text[start:end]

    @property
    def citation(self) -> str:
        return f"{self.source}:{self.line_start}-{self.line_end}"

    @property
    def content_key(self) -> int:
        """63-bit key of the text alone: equal texts share one embedding."""
        return int.from_bytes(hashlib.sha1(self.text.encode("utf-8")).digest()[:8], "big") >> 1


@dataclass
class ChunkingConfig:
    strategy: str = "headings"  # headings (sections, cut by size) | tokens (fixed windows)
    size: int = 160  # units per chunk (a word, a CJK character or a symbol)
    overlap: int = 32  # units shared by consecutive windows

    def validate(self) -> None:
        if self.strategy not in CHUNKERS:
            raise ConfigError(f"strategy {self.strategy!r}; choose from {CHUNKERS.names()}")
        if self.size < 1:
            raise ConfigError(f"size must be at least 1, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(
                f"overlap must be in [0, size), got {self.overlap} (size {self.size})"
            )


def unit_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of every unit of text[start:end], as offsets into text."""
    end = len(text) if end is None else end
    return [m.span() for m in UNIT.finditer(text, start, end)]


class _Lines:
    """Character offset → 1-based line number."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)


def _make(doc: Document, lines: _Lines, section: str, start: int, end: int) -> Chunk:
    text = doc.text[start:end]
    key = f"{doc.source}\0{start}\0{end}\0{text}".encode()
    return Chunk(
        id=hashlib.sha1(key).hexdigest()[:16],
        source=doc.source,
        title=doc.title,
        section=section,
        start=start,
        end=end,
        line_start=lines.line(start),
        line_end=lines.line(max(start, end - 1)),
        text=text,
    )


def _windows(
    doc: Document, lines: _Lines, cfg: ChunkingConfig, section: str, start: int, end: int
) -> list[Chunk]:
    units = unit_spans(doc.text, start, end)
    chunks, step = [], cfg.size - cfg.overlap
    for first in range(0, len(units), step):
        last = min(first + cfg.size, len(units)) - 1
        chunks.append(_make(doc, lines, section, units[first][0], units[last][1]))
        if last == len(units) - 1:
            break
    return chunks


Chunker = Callable[[Document, ChunkingConfig], list[Chunk]]
CHUNKERS: Registry[Chunker] = Registry("chunking strategy")


@CHUNKERS.register("tokens")
def by_tokens(doc: Document, cfg: ChunkingConfig) -> list[Chunk]:
    return _windows(doc, _Lines(doc.text), cfg, "", 0, len(doc.text))


def _markdown_like(doc: Document) -> str:
    return "markdown" if doc.kind in ("html", "markdown") else doc.kind


@CHUNKERS.register("headings")
def by_headings(doc: Document, cfg: ChunkingConfig) -> list[Chunk]:
    finder = HEADINGS.get(_markdown_like(doc))
    headings = finder(doc.text) if finder else []
    bounds = [(0, "")] + [(offset, title) for offset, _, title in headings]
    lines, chunks = _Lines(doc.text), []
    for i, (start, title) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(doc.text)
        chunks += _windows(doc, lines, cfg, title, start, end)
    return chunks


def chunk_document(doc: Document, config: ChunkingConfig | None = None) -> list[Chunk]:
    config = config or ChunkingConfig()
    config.validate()
    return CHUNKERS.get(config.strategy)(doc, config)
