"""MoEfication: how much of a trained dense FFN each token needs.

The claim (Zhang et al., 2022): the FFNs of a trained transformer activate sparsely, so
their neurons can be grouped into experts (by co-activation) and a small router can choose,
per token, the few experts that matter: ReLU models keep about 95% of their quality using
10–30% of the FFN parameters per token. The paper's claim is for ReLU models; the SiLU
(SwiGLU) FFNs of current checkpoints have no exact zeros, which is what this lab also measures.

Three dense models are MoEfied (`lmforge moefy`: balanced k-means on co-activations, one
linear router per layer fitted on the first 90% of each Shakespeare work, the model frozen)
and run with the top k of E experts: a native model with a ReLU-gated FFN (ReGLU) and one with
SiLU (SwiGLU), both pretrained here on Shakespeare, and SmolLM2-135M (SiLU) through the
native import. Quality: perplexity on the held-out last 10% of every work, against the FFN
share per token k / E; for SmolLM2 also BBC News topic accuracy (4-shot, nearest
demonstrations), the downstream score. Target: perplexity ratio ≤ 1.05 at ≤ 25% of the FFN
on a native model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lmforge.data.corpora import load_corpus
from lmforge.eval import EvalSettings, evaluate
from lmforge.eval.ppl import perplexity, token_stream
from lmforge.hub import load_model, load_tokenizer
from lmforge.lab.base import experiment
from lmforge.lab.runs import corpus, train_run
from lmforge.model.moefy import expert_coverage, ffn_inputs, moefy, set_top_k
from lmforge.plots import plot_curves
from lmforge.prompting import SentenceEncoder
from lmforge.recipes.moefy import SMOLLM2, batches_of, split_texts
from lmforge.report import Report
from lmforge.tokenizer import Tokenizer


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(steps=30, experts=4, ks=[1, 2, 4], tokens=2048, eval_tokens=2048, seq=64)
    return dict(
        steps=800,
        experts=16,
        ks=[1, 2, 4, 8, 16],
        tokens=8192,
        eval_tokens=16384,
        seq=128,
        smollm2=dict(ks=[2, 4, 8, 16], tokens=4096, eval_tokens=8192, seq=256, bbc_limit=60),
    )


@torch.no_grad()
def zero_share(model: nn.Module, ids: torch.Tensor) -> float:
    """Share of the FFN activations act(gate)·up (what down_proj reads) that are exactly 0."""
    counts = [0, 0]

    def count(module: nn.Module, args: tuple) -> None:
        counts[0] += int((args[0] == 0).sum())
        counts[1] += args[0].numel()

    hooks = [b.mlp.down_proj.register_forward_pre_hook(count) for b in model.model.layers]
    try:
        model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return counts[0] / max(counts[1], 1)


def sweep(
    model: nn.Module, tokenizer: Tokenizer, texts: list[str], p: dict, bbc: dict | None = None
) -> dict[str, Any]:
    """Dense, then MoEfied with the top k of E experts for each k: held-out perplexity (and
    BBC accuracy with `bbc`: its settings and embedder); and at a quarter of the experts the
    activation mass the router's and an oracle's choices hold, averaged over layers."""
    fit, held = split_texts(texts)
    stream = token_stream(tokenizer, fit, p["tokens"])[: p["tokens"]]
    moe = moefy(model, batches_of(stream, p["seq"]), p["experts"], p["ks"][-1], progress=False)
    set_top_k(moe, max(1, p["experts"] // 4))
    inputs = ffn_inputs(model, batches_of(token_stream(tokenizer, held, 4096)[:4096], p["seq"]))
    layers = [expert_coverage(b.mlp, x) for b, x in zip(moe.model.layers, inputs, strict=True)]
    coverage = {key: sum(c[key] for c in layers) / len(layers) for key in ("router", "oracle")}

    def score(m: nn.Module) -> dict[str, Any]:
        ppl = perplexity(m, tokenizer, held, max_length=p["seq"], max_tokens=p["eval_tokens"])
        out = {"ppl": ppl.perplexity}
        if bbc is not None:
            result = evaluate(m, tokenizer, "bbc-news", bbc["settings"], embed=bbc["embed"])
            out["bbc"] = result.metrics["accuracy"]
        return out

    rows = [{"k": "dense", "share": 1.0, **score(model)}]
    for k in tqdm(p["ks"], desc="top-k", unit="k"):
        set_top_k(moe, k)
        rows.append({"k": k, "share": k / p["experts"], **score(moe)})
    for row in rows:
        row["ratio"] = row["ppl"] / rows[0]["ppl"]
    return {"rows": rows, "coverage": coverage}


def native(out_dir: Path, quick: bool, p: dict, texts: list[str]) -> dict[str, Any]:
    """The two native models, pretrained here, MoEfied and swept."""
    results = {}
    for activation in ("relu", "silu"):
        train = dict(max_steps=p["steps"], eval_every=p["steps"])
        run = f"dense-{activation}"
        _, model_dir = train_run(out_dir, run, {"activation": activation}, train, quick)
        model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
        ids = torch.tensor([token_stream(tokenizer, texts[-1:], p["seq"])[: p["seq"]]])
        results[f"native {activation}"] = {
            "zeros": zero_share(model, ids),
            **sweep(model, tokenizer, texts, p),
        }
    return results


def smollm2(p: dict, texts: list[str]) -> dict[str, Any]:
    """SmolLM2 through the native import: perplexity and BBC topic accuracy per k."""
    s = {**p, **p["smollm2"], "ks": p["smollm2"]["ks"]}
    model, tokenizer = load_model(SMOLLM2).eval(), load_tokenizer(SMOLLM2)
    bbc = EvalSettings(shots=4, selection="nearest", limit=s["bbc_limit"], truncate=60, pool=250)
    ids = torch.tensor([token_stream(tokenizer, texts[-1:], s["seq"])[: s["seq"]]])
    swept = sweep(model, tokenizer, texts, s, {"settings": bbc, "embed": SentenceEncoder()})
    return {"zeros": zero_share(model, ids), **swept}


def best_share(rows: list[dict[str, Any]], limit: float = 1.05) -> float | None:
    """The smallest FFN share whose perplexity ratio is within `limit`."""
    fits = [r["share"] for r in rows if r["k"] != "dense" and r["ratio"] <= limit]
    return min(fits) if fits else None


def verdict(results: dict[str, Any]) -> str:
    parts = []
    for name, r in results.items():
        ratio, best = quarter_ratio(r["rows"]), best_share(r["rows"])
        text = f"{name} ({100 * r['zeros']:.0f}% of FFN activations exactly zero): "
        if ratio is not None:
            text += f"perplexity ratio {ratio:.3f} at ≤ 25% of the FFN"
        text += "; within 5% of dense from " + (
            f"{100 * best:.0f}% of the FFN" if best is not None else "no share below 100%"
        )
        if "coverage" in r:
            c = r["coverage"]
            text += (
                f"; a quarter of the experts held {100 * c['router']:.0f}% of the activation "
                f"mass as routed, {100 * c['oracle']:.0f}% at best"
            )
        parts.append(text + ".")
    natives = {n: r for n, r in results.items() if n.startswith("native")}
    quarter = {n: quarter_ratio(r["rows"]) for n, r in natives.items()}
    met = any(q is not None and q <= 1.05 for q in quarter.values())
    parts.append(
        "Target (a native model within 5% of its dense perplexity on ≤ 25% of the FFN): "
        + ("met." if met else "not met.")
    )
    relu, silu = quarter.get("native relu"), quarter.get("native silu")
    if relu is not None and silu is not None:
        parts.append(
            "At a quarter of the FFN the ReLU model lost "
            + ("less than" if relu < silu else "no less than")
            + " the SiLU model, "
            + (
                "as the paper's premise (exact zeros leave a token's output to few neurons) "
                "predicts."
                if relu < silu
                else "against the paper's premise that exact zeros make MoEfication easier."
            )
        )
    return " ".join(parts)


def quarter_ratio(rows: list[dict[str, Any]]) -> float | None:
    """The perplexity ratio at the largest FFN share ≤ 25%."""
    at = [x for x in rows if x["k"] != "dense" and x["share"] <= 0.25]
    return at[-1]["ratio"] if at else None


def table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    with_bbc = any("bbc" in x for r in results.values() for x in r["rows"])
    headers = ["model", "experts used", "FFN share", "perplexity", "ratio to dense"]
    headers += ["BBC 4-shot accuracy"] if with_bbc else []
    rows = []
    for name, r in results.items():
        for x in r["rows"]:
            row = [name, x["k"], f"{100 * x['share']:.1f}%", f"{x['ppl']:.2f}", f"{x['ratio']:.3f}"]
            rows.append(
                row + ([f"{100 * x['bbc']:.1f}%" if "bbc" in x else ""] if with_bbc else [])
            )
    return headers, rows


@experiment(
    "moefication",
    "A dense model's FFN splits into experts of which a token needs only a few.",
    minutes=35,
)
def run(out_dir: Path, quick: bool) -> Report:
    p = settings(quick)
    texts = list(load_corpus(corpus(out_dir, quick)).texts())
    results = native(out_dir, quick, p, texts)
    if not quick:
        results["SmolLM2-135M"] = smollm2(p, texts)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = Report("MoEfication", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    headers, rows = table(results)
    report.table(headers, rows, f"Held-out perplexity with the top k of {p['experts']} experts")
    report.text(verdict(results))
    curves = {
        n: ([x["share"] for x in r["rows"]], [x["ratio"] for x in r["rows"]])
        for n, r in results.items()
    }
    figure = report.figure("moefication-ppl.png", "Perplexity ratio against FFN share per token")
    share = dict(xlabel="FFN share per token")
    plot_curves(curves, figure, title="MoEfication", ylabel="perplexity / dense", **share)
    if "SmolLM2-135M" in results:
        rows = results["SmolLM2-135M"]["rows"]
        bbc = {"SmolLM2-135M": ([x["share"] for x in rows], [x["bbc"] for x in rows])}
        figure = report.figure("moefication-bbc.png", "BBC topic accuracy against FFN share")
        plot_curves(bbc, figure, title="SmolLM2 MoEfied", ylabel="BBC accuracy", **share)
    return report
