"""The knowledge lab: its plan, its verdicts read off the tables, its registration, and the
quick run end to end on SmolLM2 (a built-in mini FAQ, so the Python docs are not needed)."""

import json

import pytest

from lmforge.lab import LABS, run_experiment
from lmforge.lab.knowledge import plan
from lmforge.lab.knowledge_report import (
    answer_verdict,
    judge_verdict,
    knn_verdict,
    retrieval_verdict,
)


def test_the_lab_is_registered_with_its_plans():
    exp = LABS.get("knowledge")
    assert exp.minutes == 60 and "Retrieval" in exp.claim
    assert plan(True)["questions"] == 2 and plan(False)["questions"] == 0  # 0 = all test ones


def test_verdicts_read_the_tables():
    recall = {"BM25": 0.5, "dense (MiniLM)": 0.6, "hybrid (RRF)": 0.7, "hybrid + LM rerank": 0.65}
    rows = [{"name": name, "recall@5": value} for name, value in recall.items()]
    assert retrieval_verdict(rows) == (
        "Recall@5: BM25 50%, dense 60%, hybrid 70% (at least as high as the better single "
        "retriever), hybrid with LM reranking 65%."
    )
    names = ["closed-book", "RAG naive (dense)", "RAG hybrid", "GraphRAG (local)",
             "injected (LoRA r=16)", "knowledge module", "copy top source (no LM)"]  # fmt: skip
    f1 = [0.05, 0.12, 0.15, 0.08, 0.06, 0.05, 0.2]
    text = answer_verdict([{"name": n, "token_f1": v} for n, v in zip(names, f1)])
    assert text == (
        "Token F1 against the reference answers: closed-book 5.0, best RAG (RAG hybrid) 15.0 — "
        "3.0× closed-book; GraphRAG 8.0; LoRA-injected 6.0; knowledge module 5.0; copying the "
        "top source's first words, no model, 20.0 (4.0×: a reader copying the best-ranked source "
        "word for word within the same answer budget)."
    )
    judges = {
        "pmi": {"auc": 0.99, "accepts_supported": 1.0, "accepts_unsupported": 0.05, "claims": 84},
        "entailment": {"auc": 0.5, "accepts_supported": 0.0, "accepts_unsupported": 0.0},
    }
    assert judge_verdict(judges) == (
        "The faithfulness judges on 84 sentences of the index whose answer is known (judged "
        "against the chunk they were copied from, or against another chunk; AUC 0.5 = chance): "
        "pmi AUC 0.99, accepting 100% of the copied and 5% of the foreign sentences; entailment "
        "AUC 0.50, accepting 0% of the copied and 0% of the foreign sentences. The faithfulness "
        "column uses pmi."
    )
    knn = [{"perplexity": 20.0, "lam": 0.0}, {"perplexity": 18.5, "lam": 0.25},
           {"perplexity": 19.0, "lam": 0.5}]  # fmt: skip
    assert knn_verdict(knn).startswith(
        "kNN-LM: held-out FAQ perplexity 20.00 without the datastore, 18.50 with it at λ=0.25 "
        "(-1.50;"
    )


@pytest.mark.slow
@pytest.mark.assets
def test_knowledge_quick_writes_a_report(tmp_path):
    text = run_experiment("knowledge", tmp_path / "lab", quick=True).read_text()
    assert "| retriever | recall@1 |" in text and "| input | closed-book |" in text
    results = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert [r["name"] for r in results["answers"]] == [
        "closed-book", "RAG naive (dense)", "RAG hybrid", "RAG hybrid + rerank",
        "GraphRAG (local)", "copy top source (no LM)", "injected (LoRA r=16)",
        "knowledge module",
    ]  # fmt: skip
    assert sorted(results["judges"]) == ["entailment", "pmi"]
    assert results["n"] == 2 and (tmp_path / "lab" / "answers.png").stat().st_size > 1000
    assert run_experiment("knowledge", tmp_path / "lab", quick=True).is_file()  # runs again


def test_the_judge_samples_chinese_paragraphs_too():
    from types import SimpleNamespace

    from lmforge.lab.knowledge import judge_sample

    sentence = "长城位于中国北方，是古代的防御工程。"
    chunks = [SimpleNamespace(text=sentence + "\n\nok")]
    assert judge_sample(SimpleNamespace(chunks=chunks), 5) == [sentence]
