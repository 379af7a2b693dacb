"""A question-answering set from the Python FAQ (Debian's python3.11-doc), with gold spans.

    faq/programming.rst.txt, faq/general.rst.txt
        a question = a section title ending in "?"; its answer = the text up to the next title
    ─► QAItem(question, answer = the leading paragraphs, ≥ min_words words; source + span)
    ─► corpus/faq/*.rst.txt: every FAQ page with its question titles blanked out (the lines
       stay, empty, so line numbers match the original), so that retrieval has to match
       the answer's content rather than a copy of the question
    ─► split: "dev" or "test" from a hash of the question, fixed whatever else changes

A chunk is gold for a question when it comes from the question's file and overlaps the
span of its reference answer.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.assets import asset_path
from lmforge.atomic import atomic_write_text
from lmforge.errors import AssetError, DataError
from lmforge.knowledge.chunking import Chunk
from lmforge.knowledge.documents import read_text_file, rst_headings

QA_PAGES = ("programming", "general")
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class QAItem:
    id: str  # page and number, e.g. "programming-12"
    question: str  # the FAQ title
    answer: str  # the reference answer: the answer's leading paragraphs
    source: str  # the corpus file that holds the answer
    start: int  # character span of the reference answer in that file
    end: int
    split: str  # dev | test, fixed by a hash of the question

    def is_gold(self, chunk: Chunk) -> bool:
        return chunk.source == self.source and chunk.start < self.end and self.start < chunk.end


def python_docs(docs: str | Path | None = None) -> Path:
    """The folder of the Python documentation sources (`faq/` inside it)."""
    if docs:
        root = Path(docs)
    else:
        try:
            root = asset_path("python-docs")
        except AssetError:
            root = Path("/usr/share/doc/python3.11/html/_sources")
    if not (root / "faq" / "programming.rst.txt").is_file():
        raise AssetError(
            f"{root} does not hold the Python documentation sources (faq/programming.rst.txt); "
            "install them with: apt-get install python3.11-doc (Debian, Ubuntu), or point "
            "--docs at a folder of Python's reStructuredText sources"
        )
    return root


def split_of(question: str, test_share: float = 0.6) -> str:
    bucket = int(hashlib.sha1(question.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return "test" if bucket < test_share else "dev"


def _answer_span(text: str, start: int, end: int, min_words: int) -> tuple[int, int]:
    """The leading paragraphs of text[start:end] holding at least min_words words."""
    pos, words, last = start, 0, start
    while pos < end and words < min_words:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            break
        stop = text.find("\n\n", pos, end)
        stop = end if stop < 0 else stop
        if words == 0:
            first = pos
        words += len(text[pos:stop].split())
        last, pos = pos + len(text[pos:stop].rstrip()), stop
    return (first, last) if words else (start, start)


def _blank(text: str, spans: list[tuple[int, int]]) -> tuple[str, Callable[[int], int]]:
    """text with each span replaced by its newlines only, and old offset → new offset."""
    pieces, pos, removed, marks = [], 0, 0, [(0, 0)]
    for start, end in spans:
        pieces += [text[pos:start], "\n" * text.count("\n", start, end)]
        removed += (end - start) - text.count("\n", start, end)
        marks.append((end, removed))
        pos = end
    pieces.append(text[pos:])

    def moved(offset: int) -> int:
        return offset - marks[bisect.bisect_right([m for m, _ in marks], offset) - 1][1]

    return "".join(pieces), moved


def parse_faq(text: str, source: str, min_words: int = 20) -> tuple[list[QAItem], str]:
    """(questions with their answer spans, the text with question titles blanked); the
    spans point into the blanked text."""
    headings = rst_headings(text)
    bounds = [h[0] for h in headings] + [len(text)]
    found = []  # (title, title span, answer region)
    for i, (offset, _, title) in enumerate(headings):
        if title.endswith("?"):
            body = text.index("\n", text.index("\n", offset) + 1) + 1  # after the underline
            found.append((title, (offset, body), (body, bounds[i + 1])))
    blanked, moved = _blank(text, [head for _, head, _ in found])
    page = Path(source).name.split(".")[0]
    items = []
    for title, _, (body, end) in found:
        start, stop = _answer_span(blanked, moved(body), moved(end), min_words)
        if stop > start:
            qid = f"{page}-{len(items) + 1}"
            answer = blanked[start:stop]
            items.append(QAItem(qid, title, answer, source, start, stop, split_of(title)))
    return items, blanked


def build_faq_set(out: str | Path, docs: str | Path | None = None, min_words: int = 20) -> Path:
    """Write out/corpus/faq/*.rst.txt (question titles blanked) and out/qa.jsonl."""
    root, out = python_docs(docs), Path(out)
    corpus = out / "corpus" / "faq"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    items: list[QAItem] = []
    for page in sorted((root / "faq").glob("*.rst.txt")):
        target = corpus / page.name
        found, blanked = parse_faq(read_text_file(page), str(target), min_words)
        atomic_write_text(target, blanked)
        if page.name.split(".")[0] in QA_PAGES:
            items += found
    rows = "".join(json.dumps(dataclasses.asdict(i), ensure_ascii=False) + "\n" for i in items)
    atomic_write_text(out / "qa.jsonl", rows)
    return out / "qa.jsonl"


def load_qa(path: str | Path, split: str = "") -> list[QAItem]:
    """The items of a qa.jsonl, only those of `split` when given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; build it with: lmforge rag qa-set --out DIR")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            items.append(QAItem(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            raise DataError(f"{path}:{n}: not a QA item ({e})") from None
    return [i for i in items if not split or i.split == split]
