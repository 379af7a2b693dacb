"""Labelled examples (text, label) for classification: built-in datasets and JSONL files.

The BBC News split is fixed and documented so every experiment uses the same one:
within each class the articles are sorted by file name and the i-th goes to

    test        if i % 10 == 0      (225 articles)
    validation  if i % 10 == 1      (223 articles)
    train       otherwise           (1,777 articles)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.assets import asset_path
from lmforge.errors import DataError
from lmforge.registry import Registry

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    origin: str  # file, or file:line


DATASETS: Registry[Callable[[str], list[Example]]] = Registry("labelled dataset")


def _split_of(index: int) -> str:
    return {0: "test", 1: "validation"}.get(index % 10, "train")


def _read_bbc(path: Path) -> str:
    # A few BBC articles are Windows-1252 (a bare £ sign); this known asset is read leniently.
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


@DATASETS.register("bbc-news")
def bbc_news(split: str) -> list[Example]:
    """BBC News articles (title + body) labelled business/entertainment/politics/sport/tech."""
    root = asset_path("bbc-news")
    examples = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = "sport" if label_dir.name == "sports" else label_dir.name
        for i, path in enumerate(sorted(label_dir.glob("*.txt"))):
            if _split_of(i) == split:
                text = _read_bbc(path).strip()
                examples.append(Example(" ".join(text.split()), label, str(path)))
    return examples


def read_jsonl_examples(path: Path, text_field: str, label_field: str) -> list[Example]:
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            for field in (text_field, label_field):
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise DataError(f"{path}:{n}: needs a string field {field!r}")
            examples.append(Example(row[text_field], row[label_field], f"{path}:{n}"))
    if not examples:
        raise DataError(f"{path}: holds no examples")
    return examples


def load_labelled(
    source: str, split: str = "train", *, text_field: str = "text", label_field: str = "label"
) -> list[Example]:
    """A registered dataset's split, or every example of a JSONL file of text/label records."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if source in DATASETS:
        return DATASETS.get(source)(split)
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"{source!r} is neither a labelled dataset ({', '.join(DATASETS.names())}) nor a "
            "JSONL file of records with text and label fields"
        )
    return read_jsonl_examples(path, text_field, label_field)
