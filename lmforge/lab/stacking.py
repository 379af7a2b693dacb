"""Progressive stacking: train a shallow model, grow it to full depth, and count the compute
it took to reach the validation loss of the same full-depth model trained from scratch.

The claim (Gong et al. 2019, StackingBERT: ~25% less time; Chen et al. 2022, bert2BERT:
−45% compute on BERT-base): a shallow model learns the easy, local structure cheaply, and
copying its layers gives the deep model a start that is much better than random. Here the
target is a decoder of depth L; three grown runs train depth L/2 for the first third, half
or two thirds of the updates, grow by stacking (function-preserving: the copies start as
identity blocks, so the loss does not jump; AdamW moments reset), and train on at full depth
with the same schedule.
Compute is matmul FLOPs per token × tokens, summed over the stages.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from lmforge.lab.base import experiment
from lmforge.lab.pretraining import (
    corpus_source,
    decoder,
    first_reach,
    flops_per_token,
    pretrain_run,
    reach_row,
    schedule,
    val_curve,
    vocab_of,
)
from lmforge.plots import plot_curves
from lmforge.recipes.scaling import shared_tokenizer
from lmforge.report import Report


def cumulative_flops(steps: list[int], per_step: list[tuple[int, float]]) -> list[float]:
    """FLOPs spent by each of `steps`; per_step = [(last update of a stage, FLOPs per update)]."""
    out = []
    for step in steps:
        total, start = 0.0, 0
        for end, flops in per_step:
            total += (min(step, end) - start) * flops if step > start else 0.0
            start = end
        out.append(total)
    return out


def saving(
    scratch: tuple[list, list, list], grown: tuple[list, list, list], target: float
) -> float | None:
    """1 − grown/scratch compute to reach target (each a (steps, losses, flops) curve)."""
    at_grown = first_reach(grown[0], grown[1], target)
    at_scratch = first_reach(scratch[0], scratch[1], target)
    if at_grown is None or at_scratch is None:
        return None
    return 1 - grown[2][grown[0].index(at_grown)] / scratch[2][scratch[0].index(at_scratch)]


@experiment(
    "stacking",
    "A shallow model grown into a deep one reaches its loss with ≥ 25% less compute.",
    minutes=15,
)
def run(out_dir: Path, quick: bool) -> Report:
    depth, width = (2, 64) if quick else (6, 128)
    steps = 60 if quick else 1200
    seq = 64
    source = corpus_source(out_dir, "shakespeare", quick)
    shared_tokenizer(out_dir, source, 512)
    model, train = decoder(depth, width, seq), schedule(steps, quick)
    tokens_per_step = 16 * seq
    full = flops_per_token(model, vocab_of(out_dir), seq) * tokens_per_step
    half = (
        flops_per_token({**model, "n_layer": depth // 2}, vocab_of(out_dir), seq) * tokens_per_step
    )
    plans = {"scratch": ({}, [(steps, full)])}
    for share, at in (("1/3", steps // 3), ("1/2", steps // 2), ("2/3", 2 * steps // 3)):
        grow = {"layers": [depth // 2], "at": [at]}
        plans[f"stacked at {share}"] = (grow, [(at, half), (steps, full)])
    curves, wall = {}, {}
    for name, (grow, per_step) in tqdm(plans.items(), desc="stacking lab", unit="run"):
        run_name = name.replace(" ", "-").replace("/", "of")
        _, run_dir = pretrain_run(out_dir, run_name, source, model, train, grow=grow)
        s, losses, seconds = val_curve(run_dir)
        curves[name] = (s, losses, cumulative_flops(s, per_step))
        wall[name] = seconds
    setup = (
        f"Setup: {depth} layers × {width} (the stacked runs: {depth // 2} layers until a third, "
        f"half or two thirds of the updates), {steps} updates of 16×{seq} tokens of "
        f"{'a slice of ' if quick else ''}Shakespeare, AdamW, cosine schedule over the whole run."
    )
    return write_report(out_dir, curves, wall, setup)


def write_report(out_dir: Path, curves: dict, wall: dict, setup: str) -> Report:
    target = curves["scratch"][1][-1]
    gains = {n: saving(curves["scratch"], c, target) for n, c in curves.items() if n != "scratch"}
    rows = []
    for name, curve in curves.items():
        reach = first_reach(curve[0], curve[1], target)
        seconds = f"{wall[name][curve[0].index(reach)]:.0f}" if reach is not None else "—"
        rows.append([*reach_row(name, curve, target), seconds])
    (out_dir / "results.json").write_text(
        json.dumps({"target": target, "savings": gains, "rows": rows})
    )
    report = Report("Progressive stacking", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    report.text(setup)
    report.table(
        [
            "run",
            "final val loss",
            "update reaching scratch's final loss",
            "FLOPs to reach it",
            "seconds to reach it",
        ],
        rows,
        f"Compute to reach the scratch run's final validation loss {target:.4f}",
    )
    verdict = " ".join(
        f"The run {name} never reached the scratch run's final loss in the same updates."
        if gain is None
        else f"The run {name} reached it with {100 * gain:.1f}% less compute than from scratch."
        for name, gain in gains.items()
    )
    best = max((g for g in gains.values() if g is not None), default=None)
    verdict += " The target is ≥ 25% (" + (
        "met)." if best is not None and best >= 0.25 else "not met)."
    )
    report.text(verdict)
    figure = report.figure("stacking.png", "Validation loss against training FLOPs")
    plot_curves(
        {n: (c[2], c[1]) for n, c in curves.items()},
        figure,
        title="Stacking vs from scratch",
        xlabel="training FLOPs",
        ylabel="validation loss",
    )
    return report
