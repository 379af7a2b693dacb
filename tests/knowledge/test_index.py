"""The persistent index: add and reopen without re-embedding (counted), atomic versions."""

import json

import numpy as np
import pytest

from lmforge.errors import DataError
from lmforge.knowledge.chunking import ChunkingConfig
from lmforge.knowledge.index import IndexConfig, KnowledgeIndex
from lmforge.knowledge.store import FaissStore, open_store

from .helpers import DOCS, CountingEmbedder, write_corpus

CONFIG = IndexConfig(chunking=ChunkingConfig(size=12, overlap=2))


def build(tmp_path, embedder):
    docs = write_corpus(tmp_path / "docs", {k: DOCS[k] for k in ("guide.md", "faq.rst")})
    index = KnowledgeIndex.create(tmp_path / "index", CONFIG, embedder)
    return docs, index, index.add([docs])


def test_add_embeds_only_new_texts_and_reopening_embeds_nothing(tmp_path):
    embedder = CountingEmbedder()
    docs, index, first = build(tmp_path, embedder)
    n = len(index.chunks)
    texts = len({c.text for c in index.chunks})
    assert first.embedded == texts and embedder.texts == 1 + texts  # 1: the dimension probe
    assert sorted(p.rsplit("/", 1)[1] for p in first.added) == ["faq.rst", "guide.md"]

    reopened = KnowledgeIndex.open(tmp_path / "index", embedder)
    assert embedder.texts == 1 + texts and len(reopened.chunks) == n
    assert reopened.version == 1 and len(reopened.store) == texts

    write_corpus(docs, {"zh.txt": DOCS["zh.txt"]})
    second = reopened.add([docs])
    new = [c for c in reopened.chunks if c.source.endswith("zh.txt")]
    assert second.embedded == len({c.text for c in new}) and len(second.unchanged) == 2
    assert embedder.texts == 1 + texts + second.embedded
    assert KnowledgeIndex.open(tmp_path / "index", embedder).version == 2
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["CURRENT", "v000002"]


def test_a_changed_file_is_rechunked_and_its_old_vectors_dropped(tmp_path):
    embedder = CountingEmbedder()
    docs, index, _ = build(tmp_path, embedder)
    (docs / "guide.md").write_text("# Install guide\n\nUse conda instead.\n", encoding="utf-8")
    report = index.add([docs])
    assert [p.rsplit("/", 1)[1] for p in report.changed] == ["guide.md"]
    assert report.embedded == 1
    assert len(index.store) == len({c.text for c in index.chunks})
    assert any("conda" in c.text for c in index.chunks)
    assert not any("pip install" in c.text for c in index.chunks)


def test_searches_find_the_right_chunk_and_chinese_works(tmp_path):
    embedder = CountingEmbedder()
    docs = write_corpus(tmp_path / "docs")
    index = KnowledgeIndex.create(tmp_path / "index", CONFIG, embedder)
    index.add([docs])
    best = index.chunks[index.search_bm25("why is the sky blue", 3)[0][0]]
    assert "sky blue" in best.text
    best = index.chunks[index.search_dense("Rayleigh scattering", 3)[0][0]]
    assert "Rayleigh" in best.text
    best = index.chunks[index.search_bm25("长城在哪里", 3)[0][0]]
    assert "长城位于中国北方" in best.text


def test_a_failed_update_leaves_the_previous_version_whole(tmp_path, monkeypatch):
    embedder = CountingEmbedder()
    docs, index, _ = build(tmp_path, embedder)
    before = (tmp_path / "index" / "v000001" / "chunks.jsonl").read_bytes()
    write_corpus(docs, {"zh.txt": DOCS["zh.txt"]})

    def crash(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(FaissStore, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        index.add([docs])
    monkeypatch.undo()
    assert (tmp_path / "index" / "CURRENT").read_text() == "v000001\n"
    again = KnowledgeIndex.open(tmp_path / "index", embedder)
    assert (tmp_path / "index" / "v000001" / "chunks.jsonl").read_bytes() == before
    assert not any(c.source.endswith("zh.txt") for c in again.chunks)
    again.add([docs])  # the abandoned temporary version is cleaned up by the next one
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["CURRENT", "v000002"]


def test_bad_files_are_listed_in_the_manifest_and_the_rest_indexed(tmp_path):
    embedder = CountingEmbedder()
    docs = write_corpus(tmp_path / "docs")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02")
    index = KnowledgeIndex.create(tmp_path / "index", CONFIG, embedder)
    report = index.add([docs])
    assert [p.rsplit("/", 1)[1] for p, _ in report.skipped] == ["blob.txt"]
    manifest = json.loads((tmp_path / "index" / "v000001" / "manifest.json").read_text())
    assert manifest["skipped"][0][1] == "binary file (NUL bytes)"
    assert len(manifest["files"]) == 3


def test_a_missing_index_names_the_path_and_the_command(tmp_path):
    with pytest.raises(DataError, match=r"lmforge rag index DOCS\.\.\. --out .*nowhere"):
        KnowledgeIndex.open(tmp_path / "nowhere")


STORE_KINDS = {"faiss": {}}
try:
    import qdrant_client  # noqa: F401

    STORE_KINDS["qdrant"] = {"url": ":memory:", "collection": "test"}
except ImportError:
    pass


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_store_interface(kind, tmp_path):
    store = open_store(kind, tmp_path, 4, STORE_KINDS[kind])
    vectors = np.eye(4, dtype=np.float32)
    store.add([10, 11, 12], vectors[:3])
    store.add([10], vectors[:1])  # already there: nothing changes
    assert len(store) == 3 and store.has([10, 13]) == [True, False]
    query = np.array([[0.8, 0.6, 0, 0]], dtype=np.float32)
    hits = store.search(query, 2)[0]
    assert [k for k, _ in hits] == [10, 11]
    assert [round(s, 5) for _, s in hits] == [0.8, 0.6]
    store.remove([10])
    assert [k for k, _ in store.search(query, 1)[0]] == [11] and len(store) == 2
    with pytest.raises(DataError, match="4-dimensional"):
        store.add([1], np.ones((1, 3), dtype=np.float32))
