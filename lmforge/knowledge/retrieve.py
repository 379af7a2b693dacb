"""Retrieval: BM25, dense and hybrid search, then optional LM reranking, rewriting and HyDE.

question ─► [rewrite: the LM turns it into a search query]
         ─► RETRIEVERS[mode]
              bm25    lexical matches (bm25s)
              dense   cosine to the question's embedding, or with HyDE to the mean of
                      the question's and a hypothetical answer's embeddings (Gao et al., 2022)
              hybrid  reciprocal rank fusion of both lists (Cormack et al., 2009):
                      RRF(d) = Σ_lists 1 / (k + rank(d)),  rank from 1, k = 60
         ─► [rerank: the LM's relevance, mean log p(question | passage) per token —
             the query likelihood of Sachan et al. (2022), "UPR"]
         ─► top k hits
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmforge.errors import ConfigError
from lmforge.eval.loglik import Request, loglikelihoods, normalized
from lmforge.knowledge.chunking import Chunk
from lmforge.knowledge.index import KnowledgeIndex
from lmforge.knowledge.lm import LM
from lmforge.registry import Registry


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # what the ranking used: BM25, cosine, RRF or the reranker's log-likelihood
    ranks: dict[str, int] = field(default_factory=dict)  # 1-based rank in each list it came from


@dataclass
class RetrievalConfig:
    mode: str = "hybrid"  # bm25 | dense | hybrid (reciprocal rank fusion of the two)
    k: int = 5  # chunks handed to the model
    candidates: int = 30  # chunks each list proposes before fusion and reranking
    rrf_k: int = 60  # the constant k of reciprocal rank fusion
    rerank: str = "none"  # none | loglik (the LM's mean log p(question | passage))
    rerank_depth: int = 10  # best fused hits the reranker reorders
    rewrite: bool = False  # the LM rewrites the question as a search query first
    hyde: bool = False  # dense search also reads the LM's hypothetical answer (HyDE)

    def validate(self) -> None:
        if self.mode not in RETRIEVERS:
            raise ConfigError(f"mode {self.mode!r} is unknown; choose from {RETRIEVERS.names()}")
        if self.rerank not in RERANKERS:
            raise ConfigError(f"rerank {self.rerank!r}; choose from {RERANKERS.names()}")
        if self.k < 1 or self.candidates < self.k:
            raise ConfigError(f"need 1 <= k <= candidates, got k={self.k}, {self.candidates}")


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], k: int = 60
) -> list[tuple[Hashable, float]]:
    """Items of several best-first lists by Σ 1/(k + rank), best first (ties: first seen)."""
    scores: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


@dataclass
class Query:
    text: str  # what BM25 reads (the question or its rewrite)
    vector: np.ndarray | None = None  # what dense search reads; None = embed `text`


Search = Callable[[KnowledgeIndex, Query, RetrievalConfig], list[Hit]]
RETRIEVERS: Registry[Search] = Registry("retrieval mode")


def _hits(index: KnowledgeIndex, found: list[tuple[int, float]], name: str) -> list[Hit]:
    return [Hit(index.chunks[i], s, {name: r}) for r, (i, s) in enumerate(found, start=1)]


@RETRIEVERS.register("bm25")
def bm25_search(index: KnowledgeIndex, query: Query, cfg: RetrievalConfig) -> list[Hit]:
    return _hits(index, index.search_bm25(query.text, cfg.candidates), "bm25")


@RETRIEVERS.register("dense")
def dense_search(index: KnowledgeIndex, query: Query, cfg: RetrievalConfig) -> list[Hit]:
    target = query.text if query.vector is None else query.vector
    return _hits(index, index.search_dense(target, cfg.candidates), "dense")


@RETRIEVERS.register("hybrid")
def hybrid_search(index: KnowledgeIndex, query: Query, cfg: RetrievalConfig) -> list[Hit]:
    lists = {"bm25": bm25_search(index, query, cfg), "dense": dense_search(index, query, cfg)}
    chunks = {h.chunk.id: h.chunk for hits in lists.values() for h in hits}
    ranks: dict[str, dict[str, int]] = {cid: {} for cid in chunks}  # chunk → rank per list
    for name, hits in lists.items():
        for h in hits:
            ranks[h.chunk.id][name] = h.ranks[name]
    fused = reciprocal_rank_fusion(
        [[h.chunk.id for h in hits] for hits in lists.values()], cfg.rrf_k
    )
    return [Hit(chunks[cid], s, ranks[cid]) for cid, s in fused]


Rerank = Callable[[LM | None, str, list[Hit]], list[Hit]]
RERANKERS: Registry[Rerank] = Registry("reranker")
RERANKERS.add("none", lambda lm, question, hits: hits)

RELEVANCE_PROMPT = "Passage: {passage}\nA question this passage answers:"


@RERANKERS.register("loglik")
def rerank_loglik(lm: LM | None, question: str, hits: list[Hit]) -> list[Hit]:
    """Hits ordered by the LM's mean log p(" question" | passage) per token."""
    if lm is None:
        raise ConfigError("rerank loglik needs a language model; pass lm= or --model")
    requests = [
        Request(RELEVANCE_PROMPT.format(passage=h.chunk.text), " " + question) for h in hits
    ]
    lls = loglikelihoods(lm.model, lm.tokenizer, requests, batch_size=lm.batch_size)
    scores = [normalized(ll, "mean") for ll in lls]
    order = sorted(range(len(hits)), key=lambda i: -scores[i])
    return [
        Hit(hits[i].chunk, scores[i], {**hits[i].ranks, "rerank": r})
        for r, i in enumerate(order, start=1)
    ]


REWRITE_PROMPT = (
    "Rewrite this question as a short search query of keywords. Reply with the query only.\n\n"
    "Question: {question}"
)
HYDE_PROMPT = "Write a short passage that answers this question.\n\nQuestion: {question}"


class Retriever:
    """An index plus a retrieval configuration; `lm` is needed for rerank, rewrite and HyDE."""

    def __init__(
        self, index: KnowledgeIndex, config: RetrievalConfig | None = None, lm: LM | None = None
    ) -> None:
        self.index, self.config, self.lm = index, config or RetrievalConfig(), lm
        self.config.validate()
        needs = self.config.rewrite or self.config.hyde
        if needs and lm is None:
            raise ConfigError("rewrite and hyde need a language model; pass lm=")

    def query(self, question: str) -> Query:
        text = question
        if self.config.rewrite:
            rewrite = self.lm.chat([REWRITE_PROMPT.format(question=question)], 32)[0]
            text = rewrite.strip() or question
        if not self.config.hyde:
            return Query(text)
        passage = self.lm.chat([HYDE_PROMPT.format(question=question)], 96)[0]
        vectors = self.index.embed([question, passage])  # (2, D)
        mean = vectors.mean(axis=0)
        return Query(text, mean / max(float(np.linalg.norm(mean)), 1e-9))

    def retrieve(self, question: str) -> list[Hit]:
        cfg = self.config
        hits = RETRIEVERS.get(cfg.mode)(self.index, self.query(question), cfg)
        depth = cfg.rerank_depth
        hits = RERANKERS.get(cfg.rerank)(self.lm, question, hits[:depth]) + hits[depth:]
        return hits[: cfg.k]
