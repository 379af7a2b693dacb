"""The knowledge lab's report: its tables, plots and verdicts, read off the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.plots import plot_bars
from lmforge.report import Report


def retrieval_verdict(rows: list[dict[str, Any]]) -> str:
    r5 = {r["name"]: 100 * r["recall@5"] for r in rows}
    best_single = max(r5["BM25"], r5["dense (MiniLM)"])
    hybrid = r5["hybrid (RRF)"]
    word = "at least as high as" if hybrid >= best_single else "below"
    return (
        f"Recall@5: BM25 {r5['BM25']:.0f}%, dense {r5['dense (MiniLM)']:.0f}%, hybrid "
        f"{hybrid:.0f}% ({word} the better single retriever), hybrid with LM reranking "
        f"{r5['hybrid + LM rerank']:.0f}%."
    )


def answer_verdict(rows: list[dict[str, Any]]) -> str:
    f1 = {r["name"]: 100 * r["token_f1"] for r in rows}
    closed = f1["closed-book"]
    best = max((n for n in f1 if n.startswith("RAG")), key=lambda n: f1[n])
    ratio = f1[best] / closed if closed else float("inf")
    return (
        f"Token F1 against the reference answers: closed-book {closed:.1f}, best RAG "
        f"({best}) {f1[best]:.1f} — {ratio:.1f}× closed-book; GraphRAG "
        f"{f1['GraphRAG (local)']:.1f}; LoRA-injected {f1['injected (LoRA r=16)']:.1f}; "
        f"knowledge module {f1['knowledge module']:.1f}; copying the top source's first "
        f"words, no model, {f1['copy top source (no LM)']:.1f} "
        f"({f1['copy top source (no LM)'] / closed if closed else float('inf'):.1f}×: a "
        "reader copying the best-ranked source word for word within the same answer budget)."
    )


def judge_verdict(judges: dict[str, dict[str, float]]) -> str:
    parts = [
        f"{name} AUC {j['auc']:.2f}, accepting {100 * j['accepts_supported']:.0f}% of the "
        f"copied and {100 * j['accepts_unsupported']:.0f}% of the foreign sentences"
        for name, j in judges.items()
    ]
    claims = next(iter(judges.values()))["claims"]
    return (
        f"The faithfulness judges on {claims} sentences of the index whose answer is known "
        "(judged against the chunk they were copied from, or against another chunk; AUC 0.5 "
        f"= chance): {'; '.join(parts)}. The faithfulness column uses pmi."
    )


def knn_verdict(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["perplexity"]
    best = min(rows[1:], key=lambda r: r["perplexity"])
    return (
        f"kNN-LM: held-out FAQ perplexity {base:.2f} without the datastore, "
        f"{best['perplexity']:.2f} with it at λ={best['lam']} "
        f"({best['perplexity'] - base:+.2f}; the paper's anchor is −2.9 on Wikitext-103)."
    )


HONEST = """\
Reading these numbers. Token F1 rewards answers that reuse the reference's words, which
retrieval makes easy (the sources hold them) and a closed-book 135M model cannot do; it
does not judge correctness. Faithfulness is judged by the same 135M model through the
evidence's pointwise mutual information with each claim: it credits words the sources
explain, so copying scores highest and a faithful paraphrase lower. A few
dozen steps of injection on ~40k tokens teach style and vocabulary more than facts that can
be recalled by a question phrased differently (Ovadia et al., 2024, find RAG beats
fine-tuning for knowledge injection at any scale). The test split holds a few dozen
questions: one question is worth several points."""


def _tables(report: Report, results: dict[str, Any]) -> None:
    ret = results["retrieval"]
    report.table(
        ["retriever", "recall@1", "recall@5", "recall@10", "MRR", "nDCG@k", "context precision",
         "ms/query"],
        [[r["name"], *(f"{100 * r[m]:.1f}%" for m in ("recall@1", "recall@5", "recall@10")),
          f"{r['mrr']:.3f}", f"{next(v for n, v in r.items() if n.startswith('ndcg')):.3f}",
          f"{r['context_precision']:.3f}", f"{1000 * r['seconds']:.0f}"] for r in ret],
        f"Retrieval on {results['n']} test questions ({results['chunks']} chunks)",
    )  # fmt: skip
    report.text(retrieval_verdict(ret))
    ans = results["answers"]
    report.table(
        ["level", "condition", "token F1", "exact match", "faithfulness", "s/answer", "extra MB"],
        [[r["level"], r["name"], f"{100 * r['token_f1']:.1f}", f"{100 * r['exact_match']:.1f}",
          f"{r['faithfulness']:.2f}" if "faithfulness" in r else "–", f"{r['seconds']:.1f}",
          f"{r['extra_mb']:.1f}"] for r in ans],
        "Answers (greedy; extra MB = the index, the delta or the datastore)",
    )  # fmt: skip
    report.text(answer_verdict(ans))
    report.text(judge_verdict(results["judges"]))
    knn = results["knn"]
    report.table(["output level", "perplexity", "datastore MB"],
                 [[r["name"], f"{r['perplexity']:.2f}", f"{r['extra_mb']:.0f}"] for r in knn],
                 "kNN-LM on a held-out FAQ page")  # fmt: skip
    report.text(knn_verdict(knn))


def build_report(results: dict[str, Any], out: Path, quick: bool) -> Report:
    title = "Knowledge at four levels: RAG, GraphRAG, injection, a knowledge module, kNN-LM"
    report = Report(title + (" (quick)" if quick else ""), out)
    p = results["plan"]
    report.text(
        f"SmolLM2-135M-Instruct, fp32 on the CPU, greedy answers of up to {p['max_new_tokens']}"
        f" tokens through its chat template; {p['k']} sources per RAG answer; MiniLM "
        f"embeddings; the index built in {results['index_seconds']:.0f} s. Injection: "
        f"{p['inject_steps']} steps of {p['batch']} × {p['seq_len']} tokens (lr 1e-3 for "
        "LoRA, 3e-4 for the knowledge module, whose output reaches the logits directly). "
        f"Peak memory of the whole run {results['peak_rss_mb']:,.0f} MB."
    )
    _tables(report, results)
    plot_bars({r["name"]: 100 * r["token_f1"] for r in results["answers"]},
              report.figure("answers.png", "Token F1 per condition"),
              title="Python FAQ answers, SmolLM2-135M", ylabel="token F1")  # fmt: skip
    plot_bars({r["name"]: 100 * r["recall@5"] for r in results["retrieval"]},
              report.figure("retrieval.png", "Recall@5 per retriever"),
              title="Python FAQ retrieval", ylabel="recall@5 (%)")  # fmt: skip
    sample = next(r for r in results["answers"] if r["name"] == "RAG hybrid")["samples"][0]
    report.text(f"One question, its hybrid-RAG answer and the sources it cited:\n\n"
                f"> {sample['question']}\n\n```\n{sample['answer']}\n```\n\n"
                f"cited: {sample['cited'] or 'none'}")  # fmt: skip
    report.text(HONEST)
    return report
