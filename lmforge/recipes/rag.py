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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_json
from lmforge.config import apply_overrides, from_dict, read_yaml, save_yaml, to_dict
from lmforge.errors import ConfigError
from lmforge.hub import load_model, load_tokenizer
from lmforge.knowledge import IndexConfig, KnowledgeIndex, UpdateReport
from lmforge.knowledge.evaluation import evaluate_answers, evaluate_retrieval
from lmforge.knowledge.faq import SPLITS, build_faq_set, load_qa
from lmforge.knowledge.graph import GRAPH_MODES, GraphRAG
from lmforge.knowledge.lm import LM
from lmforge.knowledge.rag import RAG, Answer, RAGConfig
from lmforge.knowledge.retrieve import Retriever
from lmforge.peft import load_adapter
from lmforge.registry import Registry


@dataclass
class RagIndexConfig(IndexConfig):
    docs: list[str] = field(default_factory=list)  # files and folders to index
    out: str = "runs/index"  # the index directory (added to when it exists)


@dataclass
class ModelChoice:
    model: str = "smollm2-135m-instruct"  # embedded model name or transformers directory
    backend: str = "native"  # native | hf
    adapter: str = ""  # a finetune run, its delta/ or a peft adapter directory


@dataclass
class RagAskConfig(RAGConfig, ModelChoice):
    index: str = "runs/index"  # the index directory `lmforge rag index` wrote
    question: str = ""  # the question to answer
    graph: str = "none"  # none | local | global: answer from the entity graph (GraphRAG)


@dataclass
class RagEvalConfig(RAGConfig, ModelChoice):
    index: str = "runs/index"  # the index to evaluate
    qa: str = "runs/faq/qa.jsonl"  # questions with gold spans (`lmforge rag qa-set`)
    split: str = "test"  # dev | test | all
    limit: int = 0  # first N questions only (0 = all)
    answers: bool = True  # also answer with the LM (F1, faithfulness), not just retrieve
    closed_book: bool = True  # also answer without retrieval, the baseline
    out: str = "runs/rag-eval"  # results.json and predictions.jsonl go here


@dataclass
class QASetConfig:
    out: str = "runs/faq"  # writes qa.jsonl and corpus/faq/*.rst.txt here
    docs: str = ""  # Python documentation sources; "" = Debian's python3.11-doc
    min_words: int = 20  # a reference answer holds at least this many words


def load_lm(choice: ModelChoice) -> LM:
    model = load_model(choice.model, backend=choice.backend)
    if choice.adapter:
        model = load_adapter(choice.adapter, model).model
    return LM(model.eval(), load_tokenizer(choice.model))


def rag_index(cfg: RagIndexConfig, progress: bool = True) -> UpdateReport:
    if not cfg.docs:
        raise ConfigError("give the documents to index: lmforge rag index DOCS... --out INDEX")
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
        raise ConfigError('give a question: lmforge rag ask INDEX "question"')
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
        rag = evaluate_answers(lm, items, RAG(index, lm, cfg), progress=True)
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


@dataclass(frozen=True)
class Action:
    help: str
    config: type
    positionals: dict[str, dict[str, Any]]  # field → argparse options of its positional
    run: Callable[[Any], Any]


ACTIONS: Registry[Action] = Registry("rag action")
ACTIONS.add("index", Action("build or extend an index of documents", RagIndexConfig,
            {"docs": {"nargs": "*", "help": "files and folders"}}, rag_index))  # fmt: skip
ACTIONS.add("ask", Action("answer a question with numbered citations", RagAskConfig,
            {"index": {"nargs": "?"}, "question": {"nargs": "?"}}, rag_ask))  # fmt: skip
ACTIONS.add("eval", Action("retrieval recall/MRR/nDCG, answer F1 and faithfulness",
            RagEvalConfig, {"index": {"nargs": "?"}}, rag_eval))  # fmt: skip
ACTIONS.add("qa-set", Action("build the Python FAQ question set and its corpus", QASetConfig,
            {}, rag_qa_set))  # fmt: skip


def load_action_config(
    action: Action, path: str | None, overrides: list[str], positionals: dict[str, Any]
) -> Any:
    """Defaults ← YAML ← dotted flags ← positional arguments, checked field by field."""
    raw = apply_overrides(read_yaml(path) if path else {}, overrides)
    raw |= {k: v for k, v in positionals.items() if k in action.positionals and v}
    try:
        return from_dict(action.config, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
