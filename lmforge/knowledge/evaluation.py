"""RAG evaluation: retrieval against gold chunks, answers against references, faithfulness.

Retrieval, for a ranked list with relevance r_i ∈ {0, 1} (gold or not) and G gold chunks:

    recall@k           Σ_{i≤k} r_i / G
    MRR                1 / (rank of the first gold chunk), 0 if none is retrieved
    nDCG@k             Σ_{i≤k} r_i / log2(i + 1)  ÷  Σ_{i ≤ min(G, k)} 1 / log2(i + 1)
    context precision  Σ_i precision@i · r_i / Σ_i r_i over the retrieved list
                       (the RAGAS definition: are the relevant chunks ranked first?)

Answers: exact match and token F1 against the reference (eval/metrics.py), and
faithfulness = the share of the answer's claims that the retrieved text supports,
judged from the LM's likelihoods (verify.py's JUDGES). How far a judge can be trusted is
measured by `judge_agreement`: sentences copied from a passage must be judged supported by
it, sentences from another passage not; its AUC is 0.5 for a judge at chance.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tqdm import tqdm

from lmforge.errors import DataError
from lmforge.eval.metrics import exact_match, token_f1
from lmforge.knowledge.faq import QAItem
from lmforge.knowledge.index import KnowledgeIndex
from lmforge.knowledge.lm import LM
from lmforge.knowledge.rag import Answer, closed_book
from lmforge.knowledge.retrieve import Retriever
from lmforge.knowledge.verify import JUDGES, claims, support, supported


def recall_at_k(relevant: Sequence[bool], n_gold: int, k: int) -> float:
    return sum(relevant[:k]) / n_gold if n_gold else 0.0


def reciprocal_rank(relevant: Sequence[bool]) -> float:
    return next((1.0 / i for i, r in enumerate(relevant, start=1) if r), 0.0)


def ndcg_at_k(relevant: Sequence[bool], n_gold: int, k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 1) for i, r in enumerate(relevant[:k], start=1) if r)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(n_gold, k) + 1))
    return dcg / ideal if ideal else 0.0


def context_precision(relevant: Sequence[bool]) -> float:
    hits, total = 0, 0.0
    for i, r in enumerate(relevant, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def gold_counts(index: KnowledgeIndex, items: Sequence[QAItem]) -> list[int]:
    """How many of the index's chunks are gold for each item."""
    by_source: dict[str, list] = {}
    for c in index.chunks:
        by_source.setdefault(c.source, []).append(c)
    return [sum(item.is_gold(c) for c in by_source.get(item.source, [])) for item in items]


@dataclass
class RetrievalReport:
    metrics: dict[str, float]  # mean over the items with a gold chunk in the index
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per item
    missing_gold: int = 0  # items whose answer no indexed chunk covers (left out)


def evaluate_retrieval(
    retriever: Retriever, items: Sequence[QAItem], ks: Sequence[int] = (1, 5, 10)
) -> RetrievalReport:
    """recall@k for each k, MRR, nDCG@k and context precision (k = the retriever's k)."""
    k = retriever.config.k
    gold = gold_counts(retriever.index, items)
    rows, missing = [], 0
    depth = max(*ks, k)
    config = replace(retriever.config, k=depth, candidates=max(depth, retriever.config.candidates))
    deep = Retriever(retriever.index, config, retriever.lm)
    for item, n_gold in zip(items, gold):
        if not n_gold:
            missing += 1
            continue
        hits = deep.retrieve(item.question)
        relevant = [item.is_gold(h.chunk) for h in hits]
        row = {f"recall@{n}": recall_at_k(relevant, n_gold, n) for n in ks}
        row |= {"mrr": reciprocal_rank(relevant), f"ndcg@{k}": ndcg_at_k(relevant, n_gold, k)}
        row["context_precision"] = context_precision(relevant[:k])
        rows.append({"id": item.id, **row})
    if not rows:
        raise DataError("no question has a gold chunk in this index; index the QA set's corpus")
    names = [n for n in rows[0] if n != "id"]
    metrics = {n: statistics.fmean(r[n] for r in rows) for n in names}
    return RetrievalReport(metrics, rows, missing)


@dataclass
class AnswerReport:
    metrics: dict[str, float]  # exact_match, token_f1, faithfulness (RAG), seconds per answer
    rows: list[dict[str, Any]] = field(default_factory=list)


def faithfulness(lm: LM, answer: str, evidence: Sequence[str], judge: str = "pmi") -> float:
    """Share of the answer's claims the evidence supports (1.0 when it claims nothing)."""
    found = claims(answer)
    return sum(supported(lm, found, evidence, judge)) / len(found) if found else 1.0


class Asker(Protocol):
    """Anything that answers a question with sources: RAG, or GraphRAG in one mode."""

    def ask(self, question: str) -> Answer: ...


def _answer(
    lm: LM, item: QAItem, rag: Asker | None, max_new_tokens: int
) -> tuple[str, list[str], list[int], float]:
    """(answer, evidence texts, cited source numbers, seconds)."""
    if rag is None:
        start = time.perf_counter()
        text = closed_book(lm, [item.question], max_new_tokens)[0]
        return text, [], [], time.perf_counter() - start
    a = rag.ask(item.question)
    return a.text, [h.chunk.text for h in a.sources], a.cited, a.seconds


def evaluate_answers(
    lm: LM,
    items: Sequence[QAItem],
    rag: Asker | None = None,
    *,
    judge: str | None = "pmi",
    max_new_tokens: int = 96,
    progress: bool = False,
) -> AnswerReport:
    """Answer every question with RAG (closed-book when rag is None) and score it;
    faithfulness is judged for RAG answers by `judge` (JUDGES; None: not judged)."""
    rows = []
    for item in tqdm(items, "answer", disable=not progress, unit="question"):
        text, evidence, cited, seconds = _answer(lm, item, rag, max_new_tokens)
        row = {
            "id": item.id,
            "question": item.question,
            "answer": text,
            "cited": cited,
            "exact_match": exact_match(text, item.answer),
            "token_f1": token_f1(text, item.answer),
            "seconds": seconds,
        }
        if rag is not None and judge:
            row["faithfulness"] = faithfulness(lm, text, evidence, judge)
        rows.append(row)
    names = [n for n in rows[0] if isinstance(rows[0][n], float)] if rows else []
    return AnswerReport({n: statistics.fmean(r[n] for r in rows) for n in names}, rows)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counting half (0.5 = chance)."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / len(pairs)


def judge_agreement(
    lm: LM, passages: Sequence[str], judge: str = "pmi", per_passage: int = 2, seed: int = 0
) -> dict[str, float]:
    """A support judge on claims whose answer is known: up to `per_passage` sentences of
    each passage against it (supported: copied word for word) and as many of another passage
    (unsupported). AUC of the judge's scores, and the share of each it accepts."""
    if len(passages) < 2:
        raise DataError("judge_agreement needs at least two passages to draw foreign claims from")
    rng = random.Random(seed)
    own: list[float] = []
    foreign: list[float] = []
    for i, passage in enumerate(passages):
        other = passages[rng.choice([j for j in range(len(passages)) if j != i])]
        own += support(lm, claims(passage)[:per_passage], [passage], judge)
        foreign += support(lm, claims(other)[:per_passage], [passage], judge)
    if not own or not foreign:
        raise DataError("the passages hold no sentence of three words or more to judge")
    threshold = JUDGES.get(judge).threshold
    return {
        "auc": auc(own, foreign),
        "accepts_supported": sum(p >= threshold for p in own) / len(own),
        "accepts_unsupported": sum(p >= threshold for p in foreign) / len(foreign),
        "claims": len(own) + len(foreign),
    }
