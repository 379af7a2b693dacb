"""Documents: text, Markdown, reStructuredText, HTML and PDF files and folders, read as text.

    path (file | folder, walked in sorted order)
      └─► READERS[kind of file] ─► Document(source, text, title, kind)
      └─► a file that cannot be read (missing, binary, undecodable, a broken PDF, an
          unknown type) is skipped and listed in LoadResult.skipped with the reason

A plain-text format (.txt, .md, .rst, .rst.txt) keeps the file's text exactly, so a chunk's
character and line span points into the file itself. HTML and PDF are converted first
(tags dropped, one paragraph per block element; one page after another for a PDF): their
spans point into that text, which `Document.text` holds.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from lmforge.errors import DataError
from lmforge.registry import Registry


@dataclass(frozen=True)
class Document:
    source: str  # the file's path as it was found
    text: str  # the text that chunks index into
    title: str  # the first heading, HTML <title>, PDF title, else the file name
    kind: str  # text | markdown | rst | html | pdf

    @property
    def digest(self) -> str:
        """Content hash: a changed file is re-chunked, an unchanged one is not."""
        return hashlib.sha1(self.text.encode("utf-8")).hexdigest()[:16]


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


Reader = Callable[[Path], tuple[str, str]]  # path → (text, title)
READERS: Registry[Reader] = Registry("document reader")
KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".rst.txt": "rst",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}

_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+_:.])\1{2,}[ \t]*$")


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".rst.txt"):
        return "rst"
    return KINDS.get(path.suffix.lower())


def read_text_file(path: Path) -> str:
    """UTF-8 text of a file; DataError when it is binary or not UTF-8."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise DataError(f"{path}: binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None


def markdown_headings(text: str) -> list[tuple[int, int, str]]:
    """(character offset, level, title) of each `#` heading outside fenced code."""
    fenced = [m.span() for m in re.finditer(r"^```.*?^```", text, re.M | re.S)]
    return [
        (m.start(), len(m.group(1)), m.group(2).strip())
        for m in _MD_HEADING.finditer(text)
        if not any(a <= m.start() < b for a, b in fenced)
    ]


def rst_headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of each reStructuredText section title (a line underlined by
    a repeated punctuation character at least as long, optionally overlined); the level is
    the order in which underline styles first appear, as docutils assigns it."""
    lines = text.splitlines(keepends=True)
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    styles: list[str] = []
    found = []
    for i in range(1, len(lines)):
        title, under = lines[i - 1].strip(), lines[i].rstrip("\r\n")
        if not title or not _RST_UNDERLINE.match(under) or len(under.strip()) < len(title):
            continue
        if _RST_UNDERLINE.match(title):  # an overline, not a title
            continue
        over = i >= 2 and lines[i - 2].rstrip("\r\n") == under
        style = ("over" if over else "") + under[0]
        if style not in styles:
            styles.append(style)
        start = offsets[i - 2] if over else offsets[i - 1]
        found.append((start, styles.index(style) + 1, title))
    return found


HEADINGS: dict[str, Callable[[str], list[tuple[int, int, str]]]] = {
    "markdown": markdown_headings,
    "rst": rst_headings,
}


def _first_heading(kind: str, text: str, fallback: str) -> str:
    finder = HEADINGS.get(kind)
    found = finder(text) if finder else []
    return found[0][2] if found else fallback


@READERS.register("text")
def read_plain(path: Path) -> tuple[str, str]:
    return read_text_file(path), path.stem


@READERS.register("markdown")
def read_markdown(path: Path) -> tuple[str, str]:
    text = read_text_file(path)
    return text, _first_heading("markdown", text, path.stem)


@READERS.register("rst")
def read_rst(path: Path) -> tuple[str, str]:
    text = read_text_file(path)
    return text, _first_heading("rst", text, path.name.split(".")[0])


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: block elements end a paragraph, script/style vanish."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section"}
    HIDDEN = {"script", "style", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.HIDDEN:
            self._hidden += 1
        self._in_title = self._in_title or tag == "title"
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        if tag == "title":
            self._in_title = False
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._hidden:
            self.parts.append(data)

    def text(self) -> str:
        joined = "".join(self.parts)
        paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", joined))
        return "\n\n".join(p for p in paragraphs if p) + "\n"


@READERS.register("html")
def read_html(path: Path) -> tuple[str, str]:
    parser = _HTMLText()
    parser.feed(read_text_file(path))
    text = parser.text()  # headings come out as `# title` lines, so markdown rules find them
    return text, " ".join(parser.title.split()) or _first_heading("markdown", text, path.stem)


@READERS.register("pdf")
def read_pdf(path: Path) -> tuple[str, str]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DataError(
            f"{path}: reading PDF needs pypdf; install it with: pip install 'lmforge[knowledge]'"
        ) from None
    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable PDF ({e})") from None
    text = "\n\n".join(p for p in pages if p) + "\n"
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), path.stem)
    return text, title.strip() or first_line[:120]


def load_document(path: str | Path) -> Document:
    """One file as a Document; DataError when it cannot be read as one."""
    path = Path(path)
    kind = kind_of(path)
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise DataError(f"{path}: unsupported file type (lmforge reads {known})")
    try:
        text, title = READERS.get(kind)(path)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not text.strip():
        raise DataError(f"{path}: no text")
    return Document(str(path), text, title, kind)


def _files(path: Path) -> Iterable[Path]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in p.relative_to(path).parts)
            if p.is_file() and not hidden:
                yield p
    else:
        yield path


def load_documents(paths: Iterable[str | Path]) -> LoadResult:
    """Every readable document under `paths` (files or folders); the rest skipped, listed."""
    result = LoadResult()
    for given in paths:
        given = Path(given)
        if not given.exists():
            result.skipped.append((str(given), "no such file or folder"))
            continue
        for path in _files(given):
            try:
                result.documents.append(load_document(path))
            except DataError as e:
                reason = str(e).removeprefix(f"{path}: ")
                result.skipped.append((str(path), reason))
    return result
