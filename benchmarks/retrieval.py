"""Retrieval speed at equal recall: lmforge's index against rank-bm25 + numpy.

LangChain's default retrievers are these same libraries — its BM25Retriever ranks with
rank_bm25.BM25Okapi, its InMemoryVectorStore scores by numpy cosine over every vector and
its EnsembleRetriever fuses by weighted reciprocal rank — so the reference is that stack
without the wrapper objects, handed the same chunk texts, the same index terms (lmforge's
analyzer, so both rank by BM25 over identical tokens) and the same vectors:

    corpus   the Python 3.11 documentation (Debian python3.11-doc) chunked by lmforge
             (headings, 160 units), its FAQ pages with question titles blanked; without the
             docs, a seeded synthetic corpus of 12,000 chunks
    vectors  MiniLM embeddings of the FAQ chunks and the questions; the other chunks get
             seeded random unit vectors (embedding 10k chunks takes ~an hour on 2 busy
             cores; --embed-all embeds them too). Embedding throughput is measured apart.
    build    chunks/s of BM25 indexing and of vector-store building, each side
    query    latency p50/p99 of BM25, dense and hybrid (RRF, k=60) top-10 over the FAQ
             questions; recall@5 against the gold chunks on each side

Usage: python benchmarks/retrieval.py [--repeats 3] [--embed-all]
It prints a table and rewrites the "## Retrieval" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.knowledge.chunking import ChunkingConfig, chunk_document
from lmforge.knowledge.documents import load_documents
from lmforge.knowledge.faq import build_faq_set, load_qa
from lmforge.knowledge.lexical import BM25, terms
from lmforge.knowledge.retrieve import reciprocal_rank_fusion
from lmforge.knowledge.store import FaissStore
from lmforge.prompting.embed import SentenceEncoder

sys.path.insert(0, str(Path(__file__).parent))
from common import update_section  # noqa: E402

SECTION = "## Retrieval"
DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def corpus(work: Path) -> tuple[list, list]:
    """(chunks, QA items): the Python docs with the blanked FAQ, or a synthetic corpus."""
    if not (DOCS / "faq").is_dir():
        rng = np.random.default_rng(0)
        vocab = [f"w{i}" for i in range(20_000)]
        weights = 1.0 / np.arange(1, len(vocab) + 1)
        words = rng.choice(vocab, size=(12_000, 120), p=weights / weights.sum())
        from lmforge.knowledge.documents import Document

        doc = Document("synthetic.txt", "\n".join(" ".join(w) for w in words), "synthetic", "text")
        return chunk_document(doc, ChunkingConfig(strategy="tokens", size=120, overlap=0)), []
    qa = build_faq_set(work / "faq")
    others = [p for p in sorted(DOCS.iterdir()) if p.name != "faq"]
    loaded = load_documents([work / "faq" / "corpus", *others])
    chunks = [c for d in loaded.documents for c in chunk_document(d, ChunkingConfig())]
    return chunks, load_qa(qa)


def vectors(chunks: list, items: list, embed_all: bool) -> tuple[np.ndarray, np.ndarray, float]:
    encoder = SentenceEncoder(max_length=256)
    sample = [c.text for c in chunks[:64]]
    start = time.perf_counter()
    encoder(sample)
    per_second = len(sample) / (time.perf_counter() - start)
    rng = np.random.default_rng(1)
    out = rng.standard_normal((len(chunks), 384)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    real = [i for i, c in enumerate(chunks) if embed_all or "/faq/" in c.source]
    for s in range(0, len(real), 64):
        rows = real[s : s + 64]
        out[rows] = encoder([chunks[i].text for i in rows]).numpy()
    queries = encoder([i.question for i in items]).numpy() if items else out[:50]
    return out, queries, per_second


def lmforge_side(texts: list[str], vecs: np.ndarray):
    start = time.perf_counter()
    bm25 = BM25.build(texts)
    bm25_s = time.perf_counter() - start
    start = time.perf_counter()
    store = FaissStore(vecs.shape[1])
    store.add(list(range(len(texts))), vecs)
    store_s = time.perf_counter() - start

    def bm25_top(q, v, k=10):
        return [i for i, _ in bm25.search(q, k)]

    def dense_top(q, v, k=10):
        return [i for i, _ in store.search(v[None], k)[0]]

    def hybrid_top(q, v, k=10):
        fused = reciprocal_rank_fusion([bm25_top(q, v, 30), dense_top(q, v, 30)])
        return [i for i, _ in fused[:k]]

    return bm25_s, store_s, {"bm25": bm25_top, "dense": dense_top, "hybrid": hybrid_top}


def reference_side(texts: list[str], vecs: np.ndarray):
    from rank_bm25 import BM25Okapi

    start = time.perf_counter()
    bm25 = BM25Okapi([terms(t) or [""] for t in texts])
    bm25_s = time.perf_counter() - start
    start = time.perf_counter()
    matrix = np.stack(list(vecs))  # the vector store: one row per chunk
    store_s = time.perf_counter() - start

    def top(scores: np.ndarray, k: int) -> list[int]:
        best = np.argpartition(-scores, k)[:k]
        return [int(i) for i in best[np.argsort(-scores[best])]]

    def bm25_top(q, v, k=10):
        scores = bm25.get_scores(terms(q))
        return [i for i in top(scores, k) if scores[i] > 0]

    def dense_top(q, v, k=10):
        return top(matrix @ v, k)

    def hybrid_top(q, v, k=10):
        fused = reciprocal_rank_fusion([bm25_top(q, v, 30), dense_top(q, v, 30)])
        return [i for i, _ in fused[:k]]

    return bm25_s, store_s, {"bm25": bm25_top, "dense": dense_top, "hybrid": hybrid_top}


def latencies(fns: list, queries: list[str], qvecs: np.ndarray, repeats: int) -> list[list]:
    """Seconds per query for each side, the sides alternating ABBA query by query."""
    out: list[list[float]] = [[] for _ in fns]
    n = 0
    for _ in range(repeats):
        for q, v in zip(queries, qvecs):
            order = range(len(fns)) if n % 2 == 0 else reversed(range(len(fns)))
            for side in order:
                start = time.perf_counter()
                fns[side](q, v)
                out[side].append(time.perf_counter() - start)
            n += 1
    return out


def recall(fn, items, qvecs, golds: list[set[int]], k: int = 5) -> float:
    found = [
        len(gold & set(fn(item.question, v, k))) / len(gold)
        for item, v, gold in zip(items, qvecs, golds)
        if gold
    ]
    return statistics.fmean(found) if found else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embed-all", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        chunks, items = corpus(Path(work))
    texts = [c.text for c in chunks]
    vecs, qvecs, embed_rate = vectors(chunks, items, args.embed_all)
    queries = [i.question for i in items] or [" ".join(t.split()[:6]) for t in texts[:50]]
    golds = [{i for i, c in enumerate(chunks) if item.is_gold(c)} for item in items]
    builders = {"lmforge": lmforge_side, "rank-bm25 + numpy": reference_side}
    built: dict[str, list] = {name: [] for name in builders}
    for r in range(args.repeats):  # the builds alternate too; each side's fastest counts
        for name in list(builders)[:: 1 if r % 2 == 0 else -1]:
            built[name].append(builders[name](texts, vecs))
    rows, sides = [], []
    for name, runs in built.items():
        rows.append({"side": name, "bm25_build": len(texts) / min(r[0] for r in runs),
                     "store_build": len(texts) / min(r[1] for r in runs)})  # fmt: skip
        sides.append(runs[-1][2])
    for mode in ("bm25", "dense", "hybrid"):
        fns = [s[mode] for s in sides]
        for row, fn, times in zip(rows, fns, latencies(fns, queries, qvecs, args.repeats)):
            row[mode] = (pct(times, 50), pct(times, 99), recall(fn, items, qvecs, golds))
    print(rows, flush=True)
    write(rows, len(chunks), len(queries), embed_rate, args)


def write(rows: list[dict], n_chunks: int, n_queries: int, embed_rate: float, args) -> None:
    ours, ref = rows
    lines = [
        "| side | BM25 build chunks/s | vector store build chunks/s | "
        + " | ".join(f"{m} p50 / p99 ms | {m} recall@5" for m in ("bm25", "dense", "hybrid"))
        + " |",
        "|---|---:|---:|" + "---:|---:|" * 3,
    ]
    for r in rows:
        cells = [f"{r['side']}", f"{r['bm25_build']:,.0f}", f"{r['store_build']:,.0f}"]
        for m in ("bm25", "dense", "hybrid"):
            p50, p99, rec = r[m]
            cells += [f"{p50:.2f} / {p99:.2f}", f"{100 * rec:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    speed = {m: ref[m][0] / ours[m][0] for m in ("bm25", "dense", "hybrid")}
    build = ours["bm25_build"] / ref["bm25_build"]
    whole = [1 / embed_rate + 1 / r["bm25_build"] + 1 / r["store_build"] for r in rows]
    corpus_note = (
        "the Python 3.11 documentation" if (DOCS / "faq").is_dir() else "a synthetic corpus"
    )
    body = "\n".join(lines) + (
        f"\n\nlmforge speed (p50 latency ratio, reference / lmforge): BM25 {speed['bm25']:.1f}x, "
        f"dense {speed['dense']:.1f}x, hybrid {speed['hybrid']:.1f}x; BM25 build {build:.2f}x "
        "(bm25s scores every term of every chunk at indexing time, rank_bm25 at query time; "
        "lmforge builds bm25s's matrix with one sort instead of a loop over chunks); "
        f"a whole build, embedding included, {whole[1] / whole[0]:.3f}x. "
        "Latencies alternate the two sides query by query (ABBA); builds alternate too, the "
        f"fastest of {args.repeats} counts.\n\n"
        f"{n_chunks:,} chunks of {corpus_note} (headings, 160 units); {n_queries} queries "
        f"(the Python FAQ questions), top 10, {args.repeats} passes; both sides read the "
        "same index terms (lmforge's analyzer) and the same vectors. lmforge: bm25s + FAISS "
        "IndexFlatIP (exact); reference: rank_bm25.BM25Okapi + a numpy matrix (LangChain's "
        "BM25Retriever and InMemoryVectorStore defaults). Vectors: MiniLM for the FAQ chunks and "
        + ("all other chunks" if args.embed_all else "seeded random unit vectors for the rest")
        + f"; MiniLM embeds {embed_rate:.1f} chunks/s here (the same on both sides, and most "
        f"of any real build). {args.threads} threads, {platform.machine()}, torch "
        f"{torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end (other jobs "
        "share the cores). BM25 recall differs by the BM25 variant (bm25s: Lucene's IDF; "
        "rank_bm25: Okapi's).\n\nRun: `python benchmarks/retrieval.py`"
    )
    print(body)
    update_section(SECTION, body)


if __name__ == "__main__":
    main()
