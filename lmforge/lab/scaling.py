"""Predictable scaling: fit L(C) = a·C^b + c to a ladder of small compute-optimal runs,
predict a run of more than 10× the ladder's largest compute, then train it and compare.

The claim (Kaplan et al. 2020; Hoffmann et al. 2022; OpenAI predicted GPT-4's final loss
from runs of 1/1,000–1/10,000 of its compute): loss falls as a power law of compute with an
irreducible floor, so a few small runs say what a large one will reach. This lab is
`lmforge scaling run`, `fit` and `predict --train` in one: six rungs on D = r·N tokens,
both laws fitted by least squares on log loss with bootstrap 95% intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.lab.base import experiment
from lmforge.lab.pretraining import corpus_source
from lmforge.recipes.scaling import (
    ScalingFitConfig,
    ScalingPredictConfig,
    ScalingRunConfig,
    scaling_fit,
    scaling_predict,
    scaling_run,
)
from lmforge.report import Report

LADDER = {  # (layers, widths, predicted run (layers, width), tokens per parameter)
    "quick": ([1, 2, 1, 2, 1, 2], [16, 16, 32, 32, 48, 48], (2, 64), 0.5),
    "full": ([1, 2, 1, 2, 1, 2], [16, 16, 32, 32, 48, 48], (2, 96), 20.0),
}


@experiment(
    "scaling",
    "A power law fitted to small runs predicts the loss of a 10× larger run within 3%.",
    minutes=10,
)
def run(out_dir: Path, quick: bool) -> Report:
    layers, widths, (big_layers, big_width), ratio = LADDER["quick" if quick else "full"]
    settings = dict(
        out=str(out_dir),
        corpus=corpus_source(out_dir, "shakespeare", quick),
        vocab_size=300,
        tokens_per_parameter=ratio,
        eval_batches=8 if quick else 0,
    )
    rows = scaling_run(ScalingRunConfig(**settings, layers=layers, widths=widths), progress=False)
    fits = scaling_fit(ScalingFitConfig(out=str(out_dir), bootstrap=100 if quick else 1000), False)
    point = scaling_predict(
        ScalingPredictConfig(**settings, layers=big_layers, width=big_width, train=True), False
    )
    (out_dir / "results.json").write_text(json.dumps({"ladder": rows, "prediction": point}))
    report = Report("Predictable scaling", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    report.text(
        f"Setup: {'a slice of ' if quick else ''}Shakespeare, a 300-token BPE, sequences of 64, "
        f"batches of 16, {ratio:g} tokens per working parameter (N: the linear layers' weights, "
        "the tied head included; C: matmul FLOPs per token × tokens)."
    )
    report.table(
        ["rung", "N", "D (tokens)", "C (FLOPs)", "val loss", "L(C) fit"],
        [
            [
                r["name"],
                r["params"],
                r["tokens"],
                f"{r['flops']:.3g}",
                f"{r['val_loss']:.4f}",
                f"{fits['L(C)'].predict(r['flops']):.4f}",
            ]
            for r in rows
        ],
        "The ladder",
    )
    spans = fits["L(C)"].param_intervals()
    report.table(
        ["parameter", "estimate", "95% interval"],
        [
            [n, f"{v:.4g}", f"[{spans[n][0]:.4g}, {spans[n][1]:.4g}]"]
            for n, v in zip(fits["L(C)"].names, fits["L(C)"].params)
        ],
        f"L(C) = a·C^b + c (rmse of log loss {fits['L(C)'].rmse:.4f})",
    )
    low, high = point["interval"]
    error = 100 * point["error"]
    report.text(
        f"Prediction for {point['name']} ({point['compute_ratio']:.1f}× the largest rung's "
        f"compute): {point['predicted']:.4f} [{low:.4f}, {high:.4f}]; measured "
        f"{point['val_loss']:.4f}, an error of {error:+.2f}% (target within 3%: "
        f"{'met' if abs(error) <= 3 else 'not met'}; the measured loss is "
        f"{'inside' if low <= point['val_loss'] <= high else 'outside'} the interval)."
    )
    if "predicted_nd" in point:
        report.text(f"L(N, D) predicts {point['predicted_nd']:.4f} for the same run.")
    report.figure("fit.png", "The ladder and the fitted L(C)")
    report.figure("prediction.png", "The prediction with its 95% interval and the measured loss")
    return report
