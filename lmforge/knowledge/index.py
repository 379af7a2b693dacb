"""The persistent index: chunks, BM25 and dense vectors in a directory, updated atomically.

    INDEX/
      CURRENT              "v000003": the version readers open (replaced atomically)
      v000003/
        manifest.json      encoder, dimension, chunking, store, files (digest, chunk count),
                           the files skipped by the last run and why
        chunks.jsonl       one Chunk per line, text included
        bm25/              the bm25s matrices
        vectors.faiss      the embedded store's vectors (a server store keeps its own)

An update (`KnowledgeIndex.add`, `lmforge rag index DOCS --out INDEX` on an existing index)
writes a new version into a temporary directory, renames it into place and only then
points CURRENT at it, so a run that dies halfway leaves the previous version whole.
Only chunks whose text is not yet in the store are embedded: adding documents embeds the
new ones, and reopening the index embeds nothing. BM25 is rebuilt from the stored text
(fast: no model involved).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lmforge.atomic import atomic_write_text, fsync_dir
from lmforge.config import from_dict, to_dict
from lmforge.errors import ConfigError, DataError
from lmforge.knowledge.chunking import Chunk, ChunkingConfig, chunk_document
from lmforge.knowledge.documents import load_documents
from lmforge.knowledge.lexical import BM25
from lmforge.knowledge.store import VectorStore, open_store
from lmforge.prompting.embed import SentenceEncoder

Embedder = Callable[[list[str]], "torch.Tensor | np.ndarray"]
DEFAULT_ENCODER = "all-minilm-l6-v2"
FORMAT = 1


@dataclass
class IndexConfig:
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)  # how documents are cut
    encoder: str = DEFAULT_ENCODER  # sentence encoder: the embedded MiniLM or a model folder
    store: str = "faiss"  # where vectors live: faiss (files in the index) | qdrant (a server)
    store_options: dict[str, str] = field(default_factory=dict)  # qdrant: url, collection
    batch_size: int = 32  # chunks embedded per encoder call

    def validate(self) -> None:
        self.chunking.validate()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class UpdateReport:
    added: list[str] = field(default_factory=list)  # files indexed for the first time
    changed: list[str] = field(default_factory=list)  # files whose text changed (re-chunked)
    unchanged: list[str] = field(default_factory=list)  # files already indexed as they are
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) not indexed
    embedded: int = 0  # chunk texts sent to the encoder in this update
    chunks: int = 0  # chunks in the index after the update


def missing_index_error(path: Path) -> DataError:
    return DataError(
        f"{path} is not an lmforge index (no {path / 'CURRENT'}); build it with: "
        f"lmforge rag index DOCS... --out {path}"
    )


def default_embedder(name: str) -> Embedder:
    """The encoder an index was built with: the embedded MiniLM, or a transformers folder."""
    return SentenceEncoder(None if name == DEFAULT_ENCODER else name, max_length=256)


class KnowledgeIndex:
    """Chunks with their BM25 and vector indexes; open with `open`, create with `create`."""

    def __init__(
        self,
        root: Path,
        version: int,
        config: IndexConfig,
        files: dict[str, dict[str, Any]],
        chunks: list[Chunk],
        bm25: BM25,
        store: VectorStore,
        embedder: Embedder | None,
        skipped: list[tuple[str, str]] | None = None,
    ) -> None:
        self.root, self.config, self.store, self._embedder = root, config, store, embedder
        self._set(version, files, chunks, bm25, skipped or [])

    def _set(
        self,
        version: int,
        files: dict[str, dict[str, Any]],
        chunks: list[Chunk],
        bm25: BM25,
        skipped: list[tuple[str, str]],
    ) -> None:
        self.version, self.files, self.chunks, self.bm25 = version, files, chunks, bm25
        self.skipped = skipped
        self._by_key: dict[int, list[int]] = {}
        for i, c in enumerate(chunks):
            self._by_key.setdefault(c.content_key, []).append(i)

    # ── opening ───────────────────────────────────────────────────────────────────────────
    @classmethod
    def create(
        cls, root: str | Path, config: IndexConfig | None = None, embedder: Embedder | None = None
    ) -> KnowledgeIndex:
        """An empty index at `root` (nothing is written until the first `add`)."""
        config = config or IndexConfig()
        config.validate()
        root = Path(root)
        if (root / "CURRENT").exists():
            raise DataError(f"{root} already holds an index; open it with KnowledgeIndex.open")
        embedder = embedder or default_embedder(config.encoder)
        dim = int(np.asarray(embedder(["dimension probe"])).shape[-1])
        store = open_store(config.store, root, dim, config.store_options)
        return cls(root, 0, config, {}, [], BM25.build([]), store, embedder)

    @classmethod
    def open(cls, root: str | Path, embedder: Embedder | None = None) -> KnowledgeIndex:
        root = Path(root)
        if not (root / "CURRENT").is_file():
            raise missing_index_error(root)
        name = (root / "CURRENT").read_text(encoding="utf-8").strip()
        directory = root / name
        try:
            manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
            lines = (directory / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{directory}: the index version is unreadable ({e})") from None
        config = from_dict(IndexConfig, manifest["config"], "manifest")
        chunks = [Chunk(**json.loads(line)) for line in lines]
        store = open_store(config.store, directory, manifest["dim"], config.store_options)
        bm25 = BM25.load(directory / "bm25")
        files, skipped = manifest["files"], [tuple(s) for s in manifest["skipped"]]
        version = int(name.lstrip("v"))
        return cls(root, version, config, files, chunks, bm25, store, embedder, skipped)

    @classmethod
    def open_or_create(
        cls, root: str | Path, config: IndexConfig | None = None, embedder: Embedder | None = None
    ) -> KnowledgeIndex:
        if (Path(root) / "CURRENT").exists():
            return cls.open(root, embedder)
        return cls.create(root, config, embedder)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = default_embedder(self.config.encoder)
        return self._embedder

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(N, D) float32 unit vectors of `texts`, in batches."""
        size = self.config.batch_size
        parts = [
            np.asarray(self.embedder(list(texts[i : i + size])), dtype=np.float32)
            for i in tqdm(range(0, len(texts), size), "embed", disable=not progress, unit="batch")
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.store.dim), np.float32)

    # ── updating ──────────────────────────────────────────────────────────────────────────
    def add(self, paths: Iterable[str | Path], progress: bool = False) -> UpdateReport:
        """Index the documents under `paths`: new and changed files are (re)chunked, only
        texts not yet in the store are embedded, and the new version replaces the old one
        atomically."""
        loaded = load_documents(paths)
        report = UpdateReport(skipped=loaded.skipped)
        fresh: dict[str, list[Chunk]] = {}
        files = dict(self.files)
        for doc in loaded.documents:
            known = files.get(doc.source)
            if known is not None and known["digest"] == doc.digest:
                report.unchanged.append(doc.source)
                continue
            (report.changed if known else report.added).append(doc.source)
            fresh[doc.source] = chunk_document(doc, self.config.chunking)
            files[doc.source] = {"digest": doc.digest, "chunks": len(fresh[doc.source])}
        chunks = [c for c in self.chunks if c.source not in fresh]
        chunks += [c for source in fresh for c in fresh[source]]
        report.embedded = self._store_vectors(chunks, progress)
        report.chunks = len(chunks)
        self._commit(chunks, files, report.skipped)
        return report

    def _store_vectors(self, chunks: list[Chunk], progress: bool) -> int:
        """Embed the chunk texts the store lacks; drop vectors no chunk uses any more."""
        texts = {c.content_key: c.text for c in chunks}
        keys = list(texts)
        missing = [k for k, present in zip(keys, self.store.has(keys)) if not present]
        if missing:
            self.store.add(missing, self.embed([texts[k] for k in missing], progress))
        dead = set(self._by_key) - set(texts)
        self.store.remove(sorted(dead))
        return len(missing)

    def _commit(
        self, chunks: list[Chunk], files: dict[str, dict], skipped: list[tuple[str, str]]
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"v{self.version + 1:06d}"
        tmp = self.root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        bm25 = BM25.build([c.text for c in chunks])
        bm25.save(tmp / "bm25")
        rows = (json.dumps(dataclasses.asdict(c), ensure_ascii=False) + "\n" for c in chunks)
        (tmp / "chunks.jsonl").write_text("".join(rows), encoding="utf-8")
        self.store.save(tmp)
        manifest = {
            "format": FORMAT,
            "config": to_dict(self.config),
            "dim": self.store.dim,
            "files": files,
            "skipped": [list(s) for s in skipped],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        fsync_dir(tmp)
        os.replace(tmp, self.root / name)
        atomic_write_text(self.root / "CURRENT", name + "\n")
        for old in self.root.iterdir():  # earlier versions and abandoned temporary ones
            if old.is_dir() and old.name != name and old.name.lstrip(".").startswith("v"):
                shutil.rmtree(old, ignore_errors=True)
        self._set(self.version + 1, files, chunks, bm25, skipped)

    # ── searching ─────────────────────────────────────────────────────────────────────────
    def search_bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk position, BM25 score) of the best k chunks, best first."""
        return self.bm25.search(query, k)

    def search_dense(self, query: str | np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk position, cosine) of the k chunks nearest to the query text or vector."""
        vector = self.embed([query]) if isinstance(query, str) else np.asarray(query)[None]
        if not len(self.chunks):
            return []
        hits = self.store.search(vector.astype(np.float32), k + 8)[0]  # a server may hold extra
        out = [(i, s) for key, s in hits for i in self._by_key.get(key, [])]
        return out[:k]
