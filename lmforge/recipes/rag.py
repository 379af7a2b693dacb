"""`lmforge rag`: index documents, ask questions with cited answers, evaluate, build a QA set.

    lmforge rag index DOCS... --out INDEX [--chunking.size 160] [--store qdrant
                                          --store_options.url URL]
    lmforge rag ask INDEX "question" [--mode hybrid] [--rerank loglik] [--hyde true] [--model M]
    lmforge rag eval INDEX --qa QA.jsonl [--split test] [--mode hybrid] [--answers true]
    lmforge rag qa-set --out DIR [--docs PYTHON_DOCS]

`index` on an existing INDEX adds to it: new and changed files only, and only texts not
yet embedded are embedded. Each action is a function taking its config dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_json
from lmforge.config import arg, save_yaml, to_dict
from lmforge.errors import ConfigError
from lmforge.knowledge import IndexConfig, KnowledgeIndex, UpdateReport
from lmforge.knowledge.evaluation import evaluate_answers, evaluate_retrieval
from lmforge.knowledge.faq import SPLITS, build_faq_set, load_qa
from lmforge.knowledge.graph import GRAPH_MODES, GraphRAG
from lmforge.knowledge.lm import LM
from lmforge.knowledge.rag import RAG, Answer, RAGConfig
from lmforge.knowledge.retrieve import Retriever
from lmforge.knowledge.verify import JUDGES
from lmforge.recipes.action import Action
from lmforge.recipes.source import ModelSource, load_source
from lmforge.registry import Registry


@dataclass
class RagIndexConfig(IndexConfig):
    docs: list[str] = arg(factory=list, positional=True)  # files and folders to index
    out: str = "runs/index"  # the index directory (added to when it exists)


@dataclass
class RagAskConfig(RAGConfig, ModelSource):
    index: str = arg("runs/index", positional=True)  # the directory `lmforge rag index` wrote
    question: str = arg("", positional=True)  # the question to answer
    graph: str = "none"  # none | local | global: answer from the entity graph (GraphRAG)


@dataclass
class RagEvalConfig(RAGConfig, ModelSource):
    index: str = arg("runs/index", positional=True)  # the index to evaluate
    qa: str = "runs/faq/qa.jsonl"  # questions with gold spans (`lmforge rag qa-set`)
    split: str = "test"  # dev | test | all
    limit: int = 0  # first N questions only (0 = all)
    answers: bool = True  # also answer with the LM (F1, faithfulness), not just retrieve
    judge: str = arg("pmi", choices=JUDGES.names)  # how faithfulness is judged (verify.py)
    closed_book: bool = True  # also answer without retrieval, the baseline
    out: str = "runs/rag-eval"  # results.json and predictions.jsonl go here


@dataclass
class QASetConfig:
    out: str = "runs/faq"  # writes qa.jsonl and corpus/faq/*.rst.txt here
    docs: str = ""  # Python documentation sources; "" = Debian's python3.11-doc
    min_words: int = 20  # a reference answer holds at least this many words


def load_lm(source: ModelSource) -> LM:
    return LM(*load_source(source))


def rag_index(cfg: RagIndexConfig, progress: bool = True) -> UpdateReport:
    if not cfg.docs:
        raise ConfigError(
            "no documents to index", fix="give them: lmforge rag index DOCS... {out=INDEX}"
        )
    config = IndexConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(IndexConfig)})
    index = KnowledgeIndex.open_or_create(cfg.out, config)
    if index.version and to_dict(index.config) != to_dict(config):
        print(f"{cfg.out} keeps the settings it was built with (chunking, encoder, store)")
    report = index.add(cfg.docs, progress=progress)
    print(
        f"{cfg.out}: {report.chunks} chunks from {len(index.files)} files "
        f"({len(report.added)} added, {len(report.changed)} changed, {len(report.unchanged)} "
        f"unchanged; {report.embedded} texts embedded)"
    )
    for path, why in report.skipped:
        print(f"  skipped {path}: {why}")
    return report


def rag_ask(cfg: RagAskConfig) -> Answer:
    if not cfg.question:
        raise ConfigError("no question asked", fix='give one: lmforge rag ask INDEX "question"')
    index = KnowledgeIndex.open(cfg.index)
    lm = load_lm(cfg)
    if cfg.graph != "none":
        if cfg.graph not in GRAPH_MODES:
            raise ConfigError(f"graph {cfg.graph!r}; choose none or one of {GRAPH_MODES.names()}")
        answer = GraphRAG.for_index(index, lm).ask(cfg.question, cfg.graph, cfg.max_new_tokens)
    else:
        answer = RAG(index, lm, cfg).ask(cfg.question)
    print(answer.text)
    if not answer.sources:
        print(f"\n(no source fits in the model's window of {lm.window} tokens with room for "
              f"{cfg.max_new_tokens} new ones: lower --max_new_tokens or --k)")  # fmt: skip
    print("\nsources (* = cited):")
    print("\n".join("  " + line for line in answer.references()))
    return answer


def rag_eval(cfg: RagEvalConfig) -> dict[str, Any]:
    if cfg.split not in (*SPLITS, "all"):
        raise ConfigError(f"split {cfg.split!r}; choose dev, test or all")
    items = load_qa(cfg.qa, "" if cfg.split == "all" else cfg.split)
    items = items[: cfg.limit] if cfg.limit else items
    index = KnowledgeIndex.open(cfg.index)
    lm = load_lm(cfg) if cfg.answers or cfg.rerank != "none" or cfg.rewrite or cfg.hyde else None
    retrieval = evaluate_retrieval(Retriever(index, cfg, lm), items)
    results: dict[str, Any] = {"n": len(items), "retrieval": retrieval.metrics,
                               "missing_gold": retrieval.missing_gold}  # fmt: skip
    rows = {r["id"]: dict(r) for r in retrieval.rows}
    if cfg.answers:
        rag = evaluate_answers(lm, items, RAG(index, lm, cfg), judge=cfg.judge, progress=True)
        results["rag"] = rag.metrics
        for r in rag.rows:
            rows.setdefault(r["id"], {}).update({f"rag_{k}": v for k, v in r.items()})
        if cfg.closed_book:
            closed = evaluate_answers(lm, items, None, max_new_tokens=cfg.max_new_tokens)
            results["closed_book"] = closed.metrics
            for r in closed.rows:
                rows[r["id"]].update({f"closed_{k}": v for k, v in r.items() if k != "id"})
    out = Path(cfg.out)
    save_yaml(cfg, out / "config.yaml")
    atomic_write_json(out / "results.json", results)
    atomic_write_json(out / "predictions.json", list(rows.values()))
    for group in ("retrieval", "rag", "closed_book"):
        if group in results:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in results[group].items())
            print(f"{group}: {shown}")
    return results


def rag_qa_set(cfg: QASetConfig) -> Path:
    path = build_faq_set(cfg.out, cfg.docs or None, cfg.min_words)
    items = load_qa(path)
    counts = {s: sum(i.split == s for i in items) for s in SPLITS}
    print(f"{path}: {len(items)} questions ({counts['dev']} dev, {counts['test']} test)")
    print(f"index its corpus with: lmforge rag index {Path(cfg.out) / 'corpus'} --out INDEX")
    return path


# One command per action (lmforge/cli.py): `lmforge rag ACTION ...`.
ACTIONS: Registry[Action] = Registry("rag action")
ACTIONS.add("index", Action("build or extend an index of documents", RagIndexConfig, rag_index))
ACTIONS.add("ask", Action("answer a question with numbered citations", RagAskConfig, rag_ask))
ACTIONS.add(
    "eval",
    Action("retrieval recall/MRR/nDCG, answer F1 and faithfulness", RagEvalConfig, rag_eval),
)
ACTIONS.add(
    "qa-set", Action("build the Python FAQ question set and its corpus", QASetConfig, rag_qa_set)
)
