"""Retrieval (RRF by hand, the three modes, LM reranking, HyDE) and RAG prompts."""

import numpy as np
import pytest

from lmforge.eval.loglik import Request, loglikelihoods
from lmforge.knowledge.chunking import ChunkingConfig
from lmforge.knowledge.index import IndexConfig, KnowledgeIndex
from lmforge.knowledge.rag import RAG, RAGConfig, cited_numbers, pack_sources, source_block
from lmforge.knowledge.retrieve import (
    HYDE_PROMPT,
    RELEVANCE_PROMPT,
    RetrievalConfig,
    Retriever,
    reciprocal_rank_fusion,
)

from .helpers import CountingEmbedder, write_corpus


@pytest.fixture
def index(tmp_path):
    docs = write_corpus(tmp_path / "docs")
    index = KnowledgeIndex.create(
        tmp_path / "index", IndexConfig(chunking=ChunkingConfig(size=20, overlap=4)),
        CountingEmbedder(),
    )  # fmt: skip
    index.add([docs])
    return index


def test_rrf_against_hand_computed_values():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    expected = {"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61}
    assert [item for item, _ in fused] == ["a", "c", "b"]
    assert all(score == pytest.approx(expected[item], abs=1e-15) for item, score in fused)
    assert reciprocal_rank_fusion([["x"], ["y"]], k=1) == [("x", 0.5), ("y", 0.5)]


def test_the_three_modes_and_the_ranks_they_report(index):
    question = "Why is the sky blue?"
    for mode in ("bm25", "dense", "hybrid"):
        hits = Retriever(index, RetrievalConfig(mode=mode, k=3)).retrieve(question)
        assert "Rayleigh" in hits[0].chunk.text or "sky blue" in hits[0].chunk.text, mode
        assert len(hits) <= 3
    hybrid = Retriever(index, RetrievalConfig(mode="hybrid", k=5)).retrieve(question)
    top = hybrid[0]
    assert top.score == pytest.approx(sum(1 / (60 + r) for r in top.ranks.values()))


def test_loglik_rerank_orders_by_the_lms_query_likelihood(index, tiny_lm):
    question = "Which ranking function, blue sky, pip install?"
    cfg = RetrievalConfig(mode="bm25", k=3, candidates=5, rerank="loglik", rerank_depth=5)
    hits = Retriever(index, cfg, tiny_lm).retrieve(question)
    plain = Retriever(index, RetrievalConfig(mode="bm25", k=5, candidates=5)).retrieve(question)
    requests = [Request(RELEVANCE_PROMPT.format(passage=h.chunk.text), " " + question)
                for h in plain]  # fmt: skip
    lls = loglikelihoods(tiny_lm.model, tiny_lm.tokenizer, requests)
    means = sorted((ll.logprob / ll.tokens for ll in lls), reverse=True)
    assert [h.score for h in hits] == pytest.approx(means[:3])
    assert [h.ranks["rerank"] for h in hits] == [1, 2, 3]


def test_hyde_searches_with_the_mean_of_question_and_hypothetical_answer(index, tiny_lm):
    question = "Where is the Great Wall?"
    query = Retriever(index, RetrievalConfig(mode="dense", hyde=True), tiny_lm).query(question)
    passage = tiny_lm.chat([HYDE_PROMPT.format(question=question)], 96)[0]
    mean = index.embed([question, passage]).mean(axis=0)
    np.testing.assert_allclose(query.vector, mean / np.linalg.norm(mean), rtol=1e-6)


def test_packing_keeps_whole_sources_within_the_room(index, tiny_lm):
    hits = Retriever(index, RetrievalConfig(mode="bm25", k=5)).retrieve("blue sky BM25 pip")
    blocks = [source_block(i, h) for i, h in enumerate(hits, 1)]
    costs = [tiny_lm.count(b) + 2 for b in blocks]
    room = costs[0] + costs[1]
    packed = pack_sources(tiny_lm, hits, room)
    assert [b for _, b in packed] == blocks[:2]
    cut = pack_sources(tiny_lm, hits, costs[0] - 5)
    assert len(cut) == 1 and tiny_lm.count(cut[0][1]) <= costs[0] - 5


def test_citations_read_only_existing_sources():
    assert cited_numbers("As [2] and [1] say, and [2] again; not [7] or [0].", 3) == [2, 1]


def test_rag_answers_fit_the_window_and_number_their_sources(index, tiny_lm):
    cfg = RAGConfig(mode="hybrid", k=4, max_new_tokens=8)
    rag = RAG(index, tiny_lm, cfg)
    answer = rag.ask("长城在哪里?")
    assert answer.prompt_tokens + cfg.max_new_tokens <= tiny_lm.window
    assert "长城位于中国" in answer.sources[0].chunk.text
    prompt, kept = rag.prompt(answer.question, answer.sources)
    assert "[1] zh" in prompt and tiny_lm.count(prompt) == answer.prompt_tokens
    assert answer.references()[0].startswith("[1]")
