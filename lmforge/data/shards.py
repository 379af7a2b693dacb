"""Token shards on disk: a corpus tokenized once, then memory-mapped by every run.

    out_dir/
      train.bin   raw little-endian uint16 ids (uint32 when the vocabulary needs it)
      val.bin     same dtype
      meta.json   dtype, token counts, tokenizer + source fingerprints, format version

Validation split, per document (so both splits see every document, and no document
leaks a prefix into validation while its remainder trains):

    document d:  t0 t1 ... t(n-k-1) │ t(n-k) ... t(n-1)      k = max(1, round(n·val_fraction))
                 └── train ─────────┘ └── val ──────────┘
    train.bin:   head(d0) eos head(d1) eos ...
    val.bin:     tail(d0) eos tail(d1) eos ...

Each piece ends with eos so that two unrelated texts never touch without a
boundary marker; a document starts with the BOS its tokenizer puts before every input,
if any. A one-token document goes to train only.

Short documents validate whole instead. A corpus of paragraphs (People's Daily: 19,484 of
about 70 tokens) would otherwise validate on the last token or two of each, out of their
context: a loss that rises as the model learns. A document whose tail would be shorter than
MIN_TAIL tokens goes to validation whole when the val_fraction share of the short documents
before it adds up to its length (so about val_fraction of their tokens validate, spread
through the corpus), else to train whole; if no short document validates that way (a corpus
of a few tiny texts), they take tails like the long ones.

The shards are keyed by (tokenizer fingerprint, source fingerprint, val_fraction,
version): a second build with the same inputs reuses the files without tokenizing.
meta.json is removed before a rebuild and written last, so an interrupted build
is never mistaken for a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.data.text import Document
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import Tokenizer

SHARD_VERSION = 2  # 2: short documents validate whole
MIN_TAIL = 16  # shorter validation tails are mostly documents' endings out of context
TRAIN_FILE, VAL_FILE, META_FILE = "train.bin", "val.bin", "meta.json"
_ENCODE_CHUNK = 256  # documents per encode_batch call: enough to keep the Rust threads busy


@dataclass
class ShardInfo:
    dtype: str  # "uint16" | "uint32"
    vocab_size: int
    eos_id: int
    train_tokens: int
    val_tokens: int
    num_documents: int
    val_fraction: float
    tokenizer_fingerprint: str
    source_fingerprint: str
    version: int = SHARD_VERSION
    reused: bool = False  # not stored: True when build_shards found the files already built

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        del d["reused"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> ShardInfo:
        # Convert through the annotated types so a hand-edited meta.json fails here, loudly.
        kinds = {"str": str, "int": int, "float": float}
        fields = [f for f in dataclasses.fields(cls) if f.name != "reused"]
        return cls(**{f.name: kinds[str(f.type)](d[f.name]) for f in fields})


def build_shards(
    documents: Iterable[Document | str],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.05,
    progress: bool = True,
    must_reuse: bool = False,
) -> ShardInfo:
    """Tokenize `documents` into out_dir/{train,val}.bin, or reuse an identical earlier build.
    `must_reuse` (a run resuming from its data position): an earlier build made from other
    text or another tokenizer is an error, never rebuilt under the run's feet."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    out = Path(out_dir)
    texts = [d.text if isinstance(d, Document) else d for d in documents]
    if not texts:
        raise DataError(f"no documents to tokenize into {out}")
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError(
            f"{tokenizer!r} has no end-of-document token; train one with the default special "
            "tokens (<|endoftext|>) or load a tokenizer that has eos"
        )
    key = dict(
        tokenizer_fingerprint=tokenizer.fingerprint,
        source_fingerprint=source_fingerprint(texts),
        val_fraction=val_fraction,
        version=SHARD_VERSION,
    )
    earlier = _finished_build(out)
    if earlier is not None and all(getattr(earlier, k) == v for k, v in key.items()):
        earlier.reused = True
        return earlier
    if must_reuse:
        raise DataError(_mismatch(out, earlier, key), fix=RESUME_FIX)

    (out / META_FILE).unlink(missing_ok=True)
    train, val = _tokenize(texts, tokenizer, eos, val_fraction, progress)
    dtype = token_dtype(max(tokenizer.vocab_size, int(max(train.max(), val.max(initial=0))) + 1))
    for name, arr in ((TRAIN_FILE, train), (VAL_FILE, val)):
        data = arr.astype(dtype)
        atomic_write(out / name, lambda p, data=data: data.tofile(p))
    info = ShardInfo(
        dtype=np.dtype(dtype).name,
        vocab_size=tokenizer.vocab_size,
        eos_id=eos,
        train_tokens=len(train),
        val_tokens=len(val),
        num_documents=len(texts),
        **key,
    )
    atomic_write_json(out / META_FILE, info.to_json())
    return info


RESUME_FIX = "resume with the corpus and tokenizer the run started with, or start a new {run_dir}"
WHAT = {
    "source_fingerprint": "the corpus text",
    "tokenizer_fingerprint": "the tokenizer",
    "val_fraction": "data.val_fraction",
    "version": "the shard format",
}


def _mismatch(out: Path, earlier: ShardInfo | None, key: dict) -> str:
    if earlier is None:
        return f"{out} holds no finished token shards; the run resumes from a position in them"
    changed = [
        f"{WHAT[k]} ({getattr(earlier, k)} → {v})"
        for k, v in key.items()
        if getattr(earlier, k) != v
    ]
    return (
        f"{out}: the run's token shards were made from other inputs: {', '.join(changed)}; "
        "resuming would continue from its data position in other data"
    )


def load_shards(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray, ShardInfo]:
    """(train, val, info) with the token arrays memory-mapped read-only."""
    out = Path(out_dir)
    info = _read_meta(out)
    arrays = []
    for name, count in ((TRAIN_FILE, info.train_tokens), (VAL_FILE, info.val_tokens)):
        path = out / name
        _check_size(path, count, np.dtype(info.dtype).itemsize)
        if count == 0:  # mmap cannot map an empty file
            arrays.append(np.zeros(0, dtype=info.dtype))
        else:
            arrays.append(np.memmap(path, dtype=info.dtype, mode="r", shape=(count,)))
    return arrays[0], arrays[1], info


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 while every id fits in it (half the disk and page cache), else uint32."""
    return np.uint16 if vocab_size <= 65535 else np.uint32


def split_point(n: int, val_fraction: float) -> int:
    """Index where a document of n tokens splits: [0, i) trains, [i, n) validates."""
    if val_fraction <= 0.0 or n < 2:
        return n
    k = min(n - 1, max(1, round(n * val_fraction)))
    return n - k


def source_fingerprint(texts: Iterable[str]) -> str:
    """16 hex digits over the texts in order (file names do not matter, content does)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length prefix: ["ab","c"] != ["a","bc"]
        h.update(b)
    return h.hexdigest()[:16]


def unigram_entropy(tokens: np.ndarray) -> float:
    """H(p) = -Σ p(w) ln p(w) in nats over token frequencies.

    This is the cross-entropy a model that ignores context entirely can reach, so a
    language model's loss should fall well below it.
    """
    if len(tokens) == 0:
        raise DataError("unigram_entropy needs at least one token")
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())


def split_points(lengths: list[int], val_fraction: float) -> list[int]:
    """Where each document splits: [0, i) trains, [i, n) validates (the module doc)."""
    points = [split_point(n, val_fraction) for n in lengths]
    short = [d for d, n in enumerate(lengths) if n > 1 and round(n * val_fraction) < MIN_TAIL]
    if val_fraction <= 0 or not short:
        return points
    whole: dict[int, int] = {}
    credit = 0.0
    for d in short:
        credit += lengths[d] * val_fraction
        if credit >= lengths[d]:
            whole[d], credit = 0, credit - lengths[d]
        else:
            whole[d] = lengths[d]
    if any(i == 0 for i in whole.values()):
        points = [whole.get(d, i) for d, i in enumerate(points)]
    return points


def _tokenize(
    texts: list[str], tokenizer: Tokenizer, eos: int, val_fraction: float, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    docs: list[np.ndarray] = []
    head = tokenizer.input_specials[0]  # a BOS the checkpoint puts before every input
    with tqdm(total=len(texts), unit="doc", desc="tokenizing", disable=not progress) as bar:
        for start in range(0, len(texts), _ENCODE_CHUNK):
            chunk = texts[start : start + _ENCODE_CHUNK]
            encoded = tokenizer.encode_batch(chunk)
            docs += [np.asarray(head + ids, dtype=np.int64) for ids in encoded]
            bar.update(len(chunk))
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    tail = np.array([eos], dtype=np.int64)
    for doc, i in zip(docs, split_points([len(d) for d in docs], val_fraction)):
        if i > 0:
            train += [doc[:i], tail]
        if i < len(doc):
            val += [doc[i:], tail]
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate(train or [empty]), np.concatenate(val or [empty])


def _finished_build(out: Path) -> ShardInfo | None:
    """The earlier build in `out` if it is complete and intact, else None (rebuild)."""
    try:
        info = _read_meta(out)
        size = np.dtype(info.dtype).itemsize
        _check_size(out / TRAIN_FILE, info.train_tokens, size)
        _check_size(out / VAL_FILE, info.val_tokens, size)
    except DataError:
        return None
    return info


def _read_meta(out: Path) -> ShardInfo:
    path = out / META_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: {out} holds no finished shards; build them first")
    try:
        info = ShardInfo.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path} is corrupt ({e!r}); delete {out} and build the shards again"
        ) from None
    if info.version != SHARD_VERSION or info.dtype not in ("uint16", "uint32"):
        raise DataError(
            f"{path}: shard format version {info.version}, dtype {info.dtype!r} is not "
            f"readable by this lmforge (version {SHARD_VERSION}); delete {out} and rebuild"
        )
    return info


def _check_size(path: Path, count: int, itemsize: int) -> None:
    want = count * itemsize
    have = path.stat().st_size if path.is_file() else None
    if have != want:
        raise DataError(
            f"{path} has {have if have is not None else 'no'} bytes but meta.json promises "
            f"{count} tokens ({want} bytes); delete {path.parent} and build the shards again"
        )
