"""BM25 over chunks (bm25s), with an analyzer that reads Chinese as well as English.

    score(q, d) = Σ_{t ∈ q} IDF(t) · tf(t, d) / (tf(t, d) + k1·(1 − b + b·|d|/avgdl))
    IDF(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))                      (Lucene's)

bm25s scores every (term, chunk) pair at indexing time, which is what makes its queries
fast; `_ArrayBM25` builds that same matrix with one sort over all pairs instead of bm25s's
Python loop over chunks (its documented override point), so indexing is as fast as
rank_bm25's, which scores nothing ahead.

bm25s's own tokenizer keeps runs of `\\w` as words, and Chinese has no spaces: a whole
sentence becomes one "word" and never matches a query. `terms` splits text the way
CJK search engines do (Lucene's CJKAnalyzer): Latin words are lower-cased and English stop
words dropped; a run of CJK characters gives its overlapping bigrams plus its single
characters, so "知识库" → 知识, 识库, 知, 识, 库 and the query "知识" matches it.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from pathlib import Path

import numpy as np

from lmforge.text_metrics import CJK

_STOP = "a an and are as at be but by for if in into is it no not of on or such that the their \
then there these they this to was will with i you he she we do does what how why when which who can"
STOP_WORDS = frozenset(_STOP.split())
_WORD = re.compile(rf"[{CJK}]+|[^\W{CJK}_]+", re.UNICODE)
_IS_CJK = re.compile(rf"[{CJK}]")


def terms(text: str) -> list[str]:
    """Index terms: lower-cased non-stop words; CJK runs as bigrams plus characters."""
    out: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group()
        if _IS_CJK.match(word):
            out.extend(word[i : i + 2] for i in range(len(word) - 1))
            out.extend(word)
        else:
            word = word.lower()
            if word not in STOP_WORDS:
                out.append(word)
    return out


def score_matrix(ids: list[list[int]], n_terms: int, k1: float, b: float) -> dict:
    """BM25 (Lucene) scores of every (term, chunk) pair as a compressed-column matrix:
    column t holds the chunks containing term t, in order, and their scores."""
    n_docs = len(ids)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n_docs)
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    docs = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    pairs, tf = np.unique(flat * n_docs + docs, return_counts=True)  # sorted: term, then chunk
    term, doc = np.divmod(pairs, n_docs)
    df = np.bincount(term, minlength=n_terms)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    scores = idf[term] * tf / (tf + norm[doc])
    indptr = np.concatenate([[0], np.cumsum(df)])
    return {"data": scores.astype(np.float32), "indices": doc.astype(np.int32),
            "indptr": indptr, "num_docs": n_docs}  # fmt: skip


class BM25:
    """A bm25s index over a list of texts; search returns (position, score) pairs."""

    def __init__(self, retriever: object, size: int) -> None:
        self.retriever = retriever
        self.size = size

    @classmethod
    def build(cls, texts: list[str]) -> BM25:
        """Index `texts`; terms become ids here in one pass (bm25s would make a second)."""
        import bm25s
        from bm25s.tokenization import Tokenized

        class _ArrayBM25(bm25s.BM25):
            def build_index_from_ids(self, unique_token_ids, corpus_token_ids, **_) -> dict:
                self.nonoccurrence_array = None  # Lucene's variant has none
                return score_matrix(corpus_token_ids, len(unique_token_ids), self.k1, self.b)

        retriever = _ArrayBM25()
        if texts:
            vocab: dict[str, int] = {}
            ids = [[vocab.setdefault(t, len(vocab)) for t in terms(x) or [""]] for x in texts]
            retriever.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)
        return cls(retriever, len(texts))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The best `k` texts for `query`, best first; texts sharing no term are left out."""
        q = terms(query)
        k = min(k, self.size)
        if not q or k == 0:
            return []
        vocab = self.retriever.vocab_dict
        q = [t for t in q if t in vocab]
        if not q:
            return []
        found, scores = self.retriever.retrieve([q], k=k, show_progress=False, n_threads=1)
        return [(int(i), float(s)) for i, s in zip(found[0], scores[0]) if s > 0]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.size:
            self.retriever.save(str(directory), show_progress=False)
        (directory / "size.json").write_text(json.dumps({"size": self.size}), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> BM25:
        import bm25s

        size = json.loads((directory / "size.json").read_text(encoding="utf-8"))["size"]
        if not size:
            return cls(bm25s.BM25(), 0)
        retriever = bm25s.BM25.load(str(directory), mmap=False, show_progress=False)
        return cls(retriever, size)
