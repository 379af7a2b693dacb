"""Prompting without training on SmolLM2-135M: in-context learning, calibration, chain-of-thought.

The claims (handbook, "prompt learning"), checked on a small real model:

  * demonstrations in the prompt help, more of them help more, and demonstrations that
    resemble the query help most (Brown et al., 2020; Liu et al., 2022);
  * a few-shot prompt biases the model towards some labels, and contextual calibration
    removes much of that bias (Zhao et al., 2021);
  * chain-of-thought prompting (Wei et al., 2022) and self-consistency (Wang et al., 2023)
    improve multi-step arithmetic, but only in large models: the ability emerges at
    around 100B parameters, and smaller models write fluent but wrong rationales.

    BBC News topics (choice, label-word likelihood)   arithmetic word problems (generate)
      zero-shot          ± calibration                  direct answer, K demonstrations
      K random demos     (K = 1, 4, 8)                  chain-of-thought, K worked demos
      K nearest demos    (MiniLM embeddings)            zero-shot CoT ("Let's think step by step")
      K fixed demos      ± calibration                  self-consistency: N sampled CoT, vote
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.atomic import atomic_write_json
from lmforge.eval import EvalSettings, evaluate
from lmforge.hub import load_model, load_tokenizer
from lmforge.lab.base import experiment
from lmforge.plots import plot_bars, plot_curves
from lmforge.prompting import SentenceEncoder
from lmforge.report import Report
from lmforge.tokenizer import Tokenizer

MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Condition:
    name: str  # the row of the report
    role: str  # what the verdict compares: zero, zero-cal, random, nearest, fixed, fixed-cal,
    #            direct, cot, zero-cot, self-consistency
    settings: dict[str, Any] = field(default_factory=dict)  # EvalSettings fields


def plan(quick: bool) -> dict[str, Any]:
    """Sizes of the run: the full one fits ~20-30 minutes on 2 CPU cores, quick ~1-2."""
    if quick:
        return dict(shots=(1, 2), k=2, bbc_limit=10, truncate=32, pool=20, levels=(1, 2),
                    per_level=3, samples=3, cot_tokens=48)  # fmt: skip
    return dict(shots=(1, 4, 8), k=4, bbc_limit=60, truncate=60, pool=250, levels=(1, 2, 3),
                per_level=15, samples=5, cot_tokens=80)  # fmt: skip


def bbc_conditions(p: dict[str, Any]) -> list[Condition]:
    k = p["k"]
    rows = [
        Condition("zero-shot", "zero"),
        Condition("zero-shot, calibrated", "zero-cal", {"calibrate": True}),
    ]
    rows += [Condition(f"K={n} random", "random", {"shots": n}) for n in p["shots"]]
    rows += [
        Condition(f"K={k} nearest (MiniLM)", "nearest", {"shots": k, "selection": "nearest"}),
        Condition(f"K={k} fixed", "fixed", {"shots": k, "selection": "fixed"}),
        Condition(
            f"K={k} fixed, calibrated",
            "fixed-cal",
            {"shots": k, "selection": "fixed", "calibrate": True},
        ),
    ]
    return rows


def arithmetic_conditions(p: dict[str, Any]) -> list[Condition]:
    k, cot = p["k"], {"reasoning": "cot", "max_new_tokens": p["cot_tokens"]}
    return [
        Condition(f"direct, K={k}", "direct", {"shots": k, "selection": "fixed"}),
        Condition(f"chain-of-thought, K={k}", "cot", {"shots": k, "selection": "fixed", **cot}),
        Condition("zero-shot CoT", "zero-cot", cot),
        Condition(
            f"self-consistency, K={k}, N={p['samples']}",
            "self-consistency",
            {"shots": k, "selection": "fixed", "samples": p["samples"], "temperature": 0.7, **cot},
        ),
    ]


def run_bbc(
    model: nn.Module, tokenizer: Tokenizer, embed: Callable, p: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    base = dict(limit=p["bbc_limit"], truncate=p["truncate"], pool=p["pool"], batch_size=8)
    for c in bbc_conditions(p):
        start = time.time()
        r = evaluate(
            model,
            tokenizer,
            "bbc-news",
            EvalSettings.from_fields(**base, **c.settings),
            embed=embed,
        )
        top, count = Counter(x["prediction"] for x in r.predictions).most_common(1)[0]
        rows.append(
            dict(name=c.name, role=c.role, shots=r.settings["shots"],
                 accuracy=r.metrics["accuracy"], n=r.n,
                 prompt_tokens=len(tokenizer.encode(r.example_prompt)),
                 top=f"{top} ({100 * count / r.n:.0f}%)", seconds=time.time() - start)
        )  # fmt: skip
    return rows


def run_arithmetic(
    model: nn.Module, tokenizer: Tokenizer, p: dict[str, Any]
) -> tuple[list[dict[str, Any]], str]:
    """One row per condition with accuracy per level; and one chain-of-thought output."""
    rows, example = [], ""
    for c in arithmetic_conditions(p):
        start, row = time.time(), dict(name=c.name, role=c.role, levels={}, samples=[])
        for level in p["levels"]:
            s = EvalSettings.from_fields(limit=p["per_level"], batch_size=8, seed=0, **c.settings)
            r = evaluate(model, tokenizer, f"arithmetic-{level}", s)
            row["levels"][level] = r.metrics["accuracy"]
            keep = ("target", "prediction", "outputs")  # two per level, to read in results.json
            row["samples"] += [{k: x[k] for k in keep} for x in r.predictions[:2]]
            if c.role == "cot" and not example:
                first = r.predictions[0]
                gold = f"(gold answer: {first['target']})"
                example = f"{r.example_prompt}{first['outputs'][0]}\n\n{gold}"
        row["mean"] = sum(row["levels"].values()) / len(row["levels"])
        row["seconds"] = time.time() - start
        rows.append(row)
    return rows, example


def bbc_verdict(rows: list[dict[str, Any]]) -> str:
    """What the BBC rows showed, read off the table rather than asserted."""
    role = {r["role"]: 100 * r["accuracy"] for r in rows if r["role"] != "random"}
    random = {r["shots"]: 100 * r["accuracy"] for r in rows if r["role"] == "random"}
    k = next(r["shots"] for r in rows if r["role"] == "nearest")
    most = max(random)
    return (
        f"Zero-shot accuracy was {role['zero']:.0f}% (chance: 20%); with {most} random "
        f"demonstrations it was {random[most]:.0f}% ({random[most] - role['zero']:+.0f} points). "
        f"With {k} demonstrations, nearest neighbours gave {role['nearest']:.0f}% against "
        f"{random[k]:.0f}% for random ones. Calibration moved zero-shot accuracy by "
        f"{role['zero-cal'] - role['zero']:+.0f} points and fixed few-shot accuracy by "
        f"{role['fixed-cal'] - role['fixed']:+.0f} points."
    )


def arithmetic_verdict(rows: list[dict[str, Any]]) -> str:
    mean = {r["role"]: 100 * r["mean"] for r in rows}
    return (
        f"Mean accuracy over the levels: direct {mean['direct']:.0f}%, chain-of-thought "
        f"{mean['cot']:.0f}%, zero-shot chain-of-thought {mean['zero-cot']:.0f}%, "
        f"self-consistency {mean['self-consistency']:.0f}%."
    )


HONEST = """\
What a 135M model can and cannot do. Topic classification is mostly recognising words
that go with a topic, which a small model can do from the label words alone;
demonstrations mainly show the format and the label set (Min et al., 2022, find that even
wrong labels in the demonstrations cost little), and calibration corrects a prior that
favours some label words over others. Multi-step arithmetic is different: chain-of-thought
helps only when the model can carry out each step, and Wei et al. (2022) find the gain
appears at around 100B parameters — below that, rationales look right and compute wrong,
so CoT can score at or below direct answering. Self-consistency votes over rationales
that share the same errors and cannot repair them. Small test sets (stated above) make
differences of a few points noise: one BBC article is worth 100/n points."""


def _write(
    report: Report, p: dict[str, Any], bbc: list, arith: list, example: str, out: Path
) -> None:
    report.table(
        ["prompt", "accuracy", "most predicted label", "prompt tokens (first)", "time"],
        [
            [
                r["name"],
                f"{100 * r['accuracy']:.1f}%",
                r["top"],
                r["prompt_tokens"],
                f"{r['seconds']:.0f} s",
            ]
            for r in bbc
        ],
        f"BBC News topics, {bbc[0]['n']} test articles",
    )
    report.text(bbc_verdict(bbc))
    plot_bars(
        {r["name"]: 100 * r["accuracy"] for r in bbc},
        report.figure("bbc.png", "BBC News accuracy per prompt"),
        title="BBC News topics, SmolLM2-135M",
        ylabel="accuracy (%)",
        reference=20.0,
        reference_label="chance",
    )
    levels = list(p["levels"])
    report.table(
        ["method", *[f"level {lv}" for lv in levels], "mean", "time"],
        [
            [
                r["name"],
                *[f"{100 * r['levels'][lv]:.0f}%" for lv in levels],
                f"{100 * r['mean']:.0f}%",
                f"{r['seconds']:.0f} s",
            ]
            for r in arith
        ],
        f"Arithmetic word problems, {p['per_level']} per level (exact answer)",
    )
    report.text(arithmetic_verdict(arith))
    plot_curves(
        {r["name"]: (levels, [100 * r["levels"][lv] for lv in levels]) for r in arith},
        report.figure("arithmetic.png", "Arithmetic accuracy by number of operations"),
        title="Arithmetic, SmolLM2-135M",
        xlabel="operations (level)",
        ylabel="accuracy (%)",
    )
    report.text(f"One chain-of-thought prompt and the model's continuation:\n\n```\n{example}\n```")
    report.text(HONEST)
    results = {"plan": p, "bbc": bbc, "arithmetic": arith}
    atomic_write_json(out / "results.json", results)


@experiment(
    "prompting",
    "Demonstrations and calibration help a small model classify; chain-of-thought needs scale.",
    minutes=25,
)
def run(out_dir: Path, quick: bool) -> Report:
    p = plan(quick)
    model, tokenizer = load_model(MODEL).eval(), load_tokenizer(MODEL)
    bbc = run_bbc(model, tokenizer, SentenceEncoder(), p)
    arith, example = run_arithmetic(model, tokenizer, p)
    title = "Prompting SmolLM2-135M: in-context learning, calibration, chain-of-thought"
    report = Report(title, out_dir)
    report.text(__doc__.split("\n\n", 1)[1].split("\n\n    ")[0])
    report.text(
        f"Settings: {MODEL}, fp32 on the CPU, plain completion prompts (no chat template). "
        f"BBC: a seeded sample of {p['bbc_limit']} test articles of the fixed split, every "
        f"article (demonstrations too) cut to {p['truncate']} tokens, demonstrations from a "
        f"seeded sample of {p['pool']} training articles, labels scored by the log-likelihood "
        f"of ' business', ' entertainment', ... after 'Topic:'. Arithmetic: {p['per_level']} "
        f"generated problems per level (levels {', '.join(map(str, p['levels']))} = number of "
        f"operations), greedy decoding except self-consistency (N={p['samples']}, T=0.7), "
        f"rationales up to {p['cot_tokens']} tokens, one fixed set of demonstrations."
    )
    _write(report, p, bbc, arith, example, Path(out_dir))
    return report
