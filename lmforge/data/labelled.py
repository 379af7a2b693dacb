"""Labelled examples (text, label) for classification: built-in datasets and JSONL files.

Every source is split the same way, so that no example is both trained on and reported as
a test result. Within each class the examples are put in a fixed order (the BBC articles
by file name; a JSONL file's records shuffled by `split_seed`, stratified by label) and
the i-th goes to

    test        if i % 10 == 0      (BBC News: 225 articles)
    validation  if i % 10 == 1      (223 articles)
    train       otherwise           (1,777 articles)

Separate files for validation and test (`labelled_splits(..., validation=, test=)`) are
used as they are instead; a test example that also appears in the training data is
dropped from the test set and counted.
"""

from __future__ import annotations

import json
import random
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


def stratified_split(examples: list[Example], split: str, seed: int) -> list[Example]:
    """The examples of `split`: within each label, in an order shuffled by `seed` (the same
    for every call), the i-th goes to test, validation or train as the module doc says."""
    chosen = []
    for label in sorted({e.label for e in examples}):
        members = [e for e in examples if e.label == label]
        order = random.Random(f"{seed}:{label}").sample(range(len(members)), len(members))
        chosen += [members[j] for i, j in enumerate(order) if _split_of(i) == split]
    return sorted(chosen, key=examples.index)


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


def _read(source: str, text_field: str, label_field: str) -> list[Example]:
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"{source!r} is neither a labelled dataset ({', '.join(DATASETS.names())}) nor a "
            "JSONL file of records with text and label fields"
        )
    return read_jsonl_examples(path, text_field, label_field)


def load_labelled(
    source: str,
    split: str = "train",
    *,
    split_seed: int = 0,
    text_field: str = "text",
    label_field: str = "label",
) -> list[Example]:
    """One split of a registered dataset or of a JSONL file of text/label records."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if source in DATASETS:
        return DATASETS.get(source)(split)
    return stratified_split(_read(source, text_field, label_field), split, split_seed)


@dataclass
class Splits:
    """Train, validation and test examples, and where each came from (for results.json)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    sources: dict[str, str]  # split → "FILE (split i % 10 …, seed S)" or "FILE"
    overlap_removed: int = 0  # test examples dropped because training held them too

    def describe(self) -> dict[str, dict[str, object]]:
        sizes = {"train": self.train, "validation": self.validation, "test": self.test}
        facts = {k: {"examples": len(v), "from": self.sources[k]} for k, v in sizes.items()}
        return {**facts, "test_overlap_removed": self.overlap_removed}


def labelled_splits(
    source: str, *, validation: str = "", test: str = "", split_seed: int = 0
) -> Splits:
    """Train/validation/test of `source`; a `validation` or `test` file replaces that split
    (all of that file). A file named as both training source and test set is refused."""
    check_split_sources(source, validation, test)
    how = f"{source} (stratified split, seed {split_seed})"
    own = {k: load_labelled(source, k, split_seed=split_seed) for k in SPLITS}
    sources = {k: (source if source in DATASETS else how) for k in SPLITS}
    for name, other in (("validation", validation), ("test", test)):
        if other:
            own[name], sources[name] = _read(other, "text", "label"), other
    seen = {(e.text, e.label) for e in own["train"]}
    kept = [e for e in own["test"] if (e.text, e.label) not in seen]
    removed = len(own["test"]) - len(kept)
    return Splits(own["train"], own["validation"], kept, sources, removed)


def check_split_sources(source: str, validation: str = "", test: str = "") -> None:
    """Refuse a validation or test file that is the training source itself (or a link)."""
    for flag, other in (("eval", validation), ("test", test)):
        if other and _same_file(source, other):
            raise DataError(
                f"{other} is the training source as well; results measured on it would be "
                "measured on training data",
                fix=f"give a separate file as {{data.{flag}}}, or none to split the source",
            )


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return pa.is_file() and pb.is_file() and pa.samefile(pb)
