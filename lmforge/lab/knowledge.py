"""Knowledge at four levels, side by side on the same questions (SmolLM2-135M, Python FAQ).

The claims (handbook, "knowledge enhancement"): a small model answers domain questions
poorly from its parameters alone; putting the knowledge in the input (retrieval-augmented
generation) helps most and cites its sources, hybrid retrieval finds more than either
retriever alone, and knowledge trained into parameters or a module or read out of a
datastore at the output helps less per unit of compute.

    input          closed-book | RAG: dense (naive), hybrid (RRF), hybrid + LM rerank, GraphRAG
                   | no reader: the top source's first words (the copying ceiling)
    parameters     LoRA continued pretraining on the FAQ pages, then closed-book
    architecture   a K-Adapter-style knowledge module trained on the same pages, closed-book
    output         kNN-LM over the FAQ pages: perplexity of a held-out FAQ page, before/after

Questions: the test split of the Python FAQ set (`lmforge rag qa-set`); the index holds the
FAQ pages with the question titles blanked out, so retrieval must match the answer itself.
"""

from __future__ import annotations

import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_json
from lmforge.eval.ppl import perplexity
from lmforge.hub import load_model, load_tokenizer
from lmforge.knowledge.evaluation import evaluate_answers, evaluate_retrieval, judge_agreement
from lmforge.knowledge.faq import QAItem, build_faq_set, load_qa, parse_faq, python_docs
from lmforge.knowledge.graph import GraphRAG
from lmforge.knowledge.index import IndexConfig, KnowledgeIndex
from lmforge.knowledge.inject import InjectionConfig, inject_knowledge
from lmforge.knowledge.knn_lm import KNNLM, build_datastore
from lmforge.knowledge.lm import LM
from lmforge.knowledge.rag import RAG, Answer, RAGConfig
from lmforge.knowledge.retrieve import RetrievalConfig, Retriever
from lmforge.knowledge.verify import JUDGES, claims
from lmforge.lab.base import experiment
from lmforge.lab.knowledge_report import build_report
from lmforge.report import Report

MODEL = "smollm2-135m-instruct"
MINI_FAQ = """\
Mini FAQ
========

What does the walrus operator do?
---------------------------------

The walrus operator := assigns a value to a name inside an expression, so a value can be
computed, tested and reused in one line, for example in a while loop condition.

Why are default arguments shared between calls?
-----------------------------------------------

Default values are evaluated once, when the def statement runs, so a mutable default such
as a list is the same object in every call; use None and create the list inside.

How do I copy a list?
---------------------

Use list(x), x.copy() or the slice x[:] for a shallow copy, and copy.deepcopy(x) when the
items themselves must be copied too.
"""


def plan(quick: bool) -> dict[str, Any]:
    """Sizes: the full run fits about an hour on 2 CPU cores, the quick one a minute."""
    if quick:
        return dict(questions=2, max_new_tokens=12, k=3, inject_steps=2, seq_len=64, batch=2,
                    knn_tokens=300, eval_tokens=120, summaries=1, knn=((50.0, 0.25),),
                    judged=3)  # fmt: skip
    return dict(questions=0, max_new_tokens=48, k=4, inject_steps=40, seq_len=256, batch=4,
                knn_tokens=30_000, eval_tokens=3_000, summaries=12,
                knn=((1.0, 0.1), (50.0, 0.1), (50.0, 0.25)), judged=30)  # fmt: skip


def questions(out: Path, quick: bool) -> tuple[list[QAItem], Path, list[str], str]:
    """(test questions, corpus folder, documents for training, held-out page for kNN-LM)."""
    if quick:
        corpus = out / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        items, blanked = parse_faq(MINI_FAQ, str(corpus / "mini.rst.txt"), min_words=10)
        (corpus / "mini.rst.txt").write_text(blanked, encoding="utf-8")
        return items, corpus, [MINI_FAQ], MINI_FAQ[len(MINI_FAQ) // 2 :]
    qa = build_faq_set(out / "faq")
    pages = sorted((python_docs() / "faq").glob("*.rst.txt"))
    texts = {p.name: p.read_text(encoding="utf-8") for p in pages}
    heldout = texts.pop("design.rst.txt")  # kNN-LM measures a page its datastore never saw
    return load_qa(qa, "test"), out / "faq" / "corpus", list(texts.values()), heldout


def retrieval_rows(index: KnowledgeIndex, lm: LM, items: list[QAItem], k: int) -> list[dict]:
    rows = []
    for name, cfg in [
        ("BM25", RetrievalConfig(mode="bm25", k=k)),
        ("dense (MiniLM)", RetrievalConfig(mode="dense", k=k)),
        ("hybrid (RRF)", RetrievalConfig(mode="hybrid", k=k)),
        ("hybrid + LM rerank", RetrievalConfig(mode="hybrid", k=k, rerank="loglik")),
    ]:
        start = time.perf_counter()
        report = evaluate_retrieval(Retriever(index, cfg, lm), items, ks=(1, 5, 10))
        seconds = (time.perf_counter() - start) / len(items)
        rows.append({"name": name, **report.metrics, "seconds": seconds})
    return rows


class _GraphAsker:
    def __init__(self, graph: GraphRAG, max_new_tokens: int) -> None:
        self.graph, self.max_new_tokens = graph, max_new_tokens

    def ask(self, question: str):
        return self.graph.ask(question, "local", self.max_new_tokens)


class CopyTop:
    """No reader: the top source's first `max_new_tokens` tokens, what a model that copies the
    best-ranked source word for word within the answer budget would score."""

    def __init__(self, retriever: Retriever, lm: LM, max_new_tokens: int) -> None:
        self.retriever, self.lm, self.max_new_tokens = retriever, lm, max_new_tokens

    def ask(self, question: str) -> Answer:
        start = time.perf_counter()
        top = self.retriever.retrieve(question)[0]
        ids = self.lm.tokenizer.encode(top.chunk.text)[: self.max_new_tokens]
        text = self.lm.tokenizer.decode(ids)
        return Answer(question, text, [top], [1], seconds=time.perf_counter() - start)


def judge_sample(index: KnowledgeIndex, n: int) -> list[str]:
    """A seeded sample of `n` of the index's paragraphs for the faithfulness judge's agreement."""
    paragraphs = [p for c in index.chunks for p in c.text.split("\n\n") if claims(p)]
    return random.Random(0).sample(paragraphs, min(n, len(paragraphs)))


def index_megabytes(index: KnowledgeIndex) -> float:
    version = index.root / f"v{index.version:06d}"
    return sum(f.stat().st_size for f in version.rglob("*") if f.is_file()) / 2**20


def answer_rows(
    index: KnowledgeIndex, lm: LM, items: list[QAItem], p: dict[str, Any]
) -> list[dict]:
    n, k = p["max_new_tokens"], p["k"]
    size = index_megabytes(index)
    graph = GraphRAG.for_index(index, lm, extractor="rules", summaries=p["summaries"])

    dense = RetrievalConfig(mode="dense", k=k)

    def rag(**fields: Any) -> RAG:
        return RAG(index, lm, RAGConfig(k=k, max_new_tokens=n, **fields))

    conditions = [
        ("closed-book", "input", None, 0.0),
        ("RAG naive (dense)", "input", rag(mode="dense"), size),
        ("RAG hybrid", "input", rag(mode="hybrid"), size),
        ("RAG hybrid + rerank", "input", rag(mode="hybrid", rerank="loglik"), size),
        ("GraphRAG (local)", "input", _GraphAsker(graph, n), size),
        ("copy top source (no LM)", "input", CopyTop(Retriever(index, dense), lm, n), size),
    ]
    rows = []
    for name, level, asker, megabytes in conditions:
        report = evaluate_answers(lm, items, asker, max_new_tokens=n, progress=True)
        rows.append({"name": name, "level": level, **report.metrics, "extra_mb": megabytes,
                     "samples": report.rows[:3]})  # fmt: skip
    return rows


def injected_rows(
    items: list[QAItem], texts: list[str], out: Path, p: dict[str, Any]
) -> list[dict]:
    """Closed-book answers after training the pages in: LoRA, then the knowledge module."""
    rows = []
    for name, level, method, delta, lr in [
        ("injected (LoRA r=16)", "parameters", "lora", {"r": 16, "alpha": 32}, 1e-3),
        ("knowledge module", "architecture", "knowledge", {"width": 256}, 3e-4),
    ]:
        tokenizer = load_tokenizer(MODEL)
        cfg = InjectionConfig(method=method, delta=delta, steps=p["inject_steps"],
                              batch_size=p["batch"], seq_len=p["seq_len"], lr=lr)  # fmt: skip
        start = time.perf_counter()
        done = inject_knowledge(load_model(MODEL), tokenizer, texts, cfg, out / method)
        train_seconds = time.perf_counter() - start
        lm = LM(done.model, tokenizer)
        report = evaluate_answers(lm, items, None, max_new_tokens=p["max_new_tokens"])
        params = sum(t.numel() for t in done.delta.state_dict().values())
        rows.append({"name": name, "level": level, **report.metrics,
                     "extra_mb": params * 4 / 2**20, "train_seconds": train_seconds,
                     "train_loss": done.result.train_loss, "samples": report.rows[:3]})  # fmt: skip
    return rows


def knn_rows(lm: LM, texts: list[str], heldout: str, p: dict[str, Any]) -> list[dict]:
    store = build_datastore(lm.model, lm.tokenizer, texts, window=512,
                            max_tokens=p["knn_tokens"], progress=True)  # fmt: skip
    window = 256
    ids = lm.tokenizer.encode(heldout)[: p["eval_tokens"]]
    text = [lm.tokenizer.decode(ids)]
    base = perplexity(lm.model, lm.tokenizer, text, max_length=window)
    rows = [{"name": "no datastore", "lam": 0.0, "perplexity": base.perplexity,
             "extra_mb": 0.0}]  # fmt: skip
    for temperature, lam in p["knn"]:
        knn = KNNLM(lm.model, store, k=16, lam=lam, temperature=temperature)
        ppl = perplexity(knn, lm.tokenizer, text, max_length=window).perplexity
        rows.append({"name": f"kNN-LM k=16, T={temperature:g}, λ={lam}", "lam": lam,
                     "perplexity": ppl, "extra_mb": store.keys.numel() * 4 / 2**20})  # fmt: skip
    return rows


@experiment(
    "knowledge",
    "Retrieval in the input beats knowledge trained into parameters, modules or the output.",
    minutes=60,
)
def run(out_dir: Path, quick: bool) -> Report:
    out = Path(out_dir)
    p = plan(quick)
    items, corpus, texts, heldout = questions(out, quick)
    items = items[: p["questions"]] if p["questions"] else items
    lm = LM(load_model(MODEL).eval(), load_tokenizer(MODEL))
    shutil.rmtree(out / "index", ignore_errors=True)  # the lab's own: a re-run builds anew
    start = time.perf_counter()
    index = KnowledgeIndex.create(out / "index", IndexConfig())
    index.add([corpus], progress=True)
    index_seconds = time.perf_counter() - start
    results = {
        "plan": p, "n": len(items), "chunks": len(index.chunks), "index_seconds": index_seconds,
        "retrieval": retrieval_rows(index, lm, items, p["k"]),
        "answers": answer_rows(index, lm, items, p),
        "judges": {
            name: judge_agreement(lm, judge_sample(index, p["judged"]), name)
            for name in JUDGES.names()
        },
        "knn": knn_rows(lm, texts, heldout, p),
    }  # fmt: skip
    results["answers"] += injected_rows(items, texts, out, p)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic_write_json(out / "results.json", results)
    return build_report(results, out, quick)
