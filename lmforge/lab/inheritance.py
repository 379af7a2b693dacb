"""Knowledge inheritance: a student that learns from text and from a trained (smaller)
teacher's distribution reaches the from-scratch student's loss in fewer updates.

The claim (Qin et al. 2022, Knowledge Inheritance; CPM-2 gained 37.5% efficiency early in
its Chinese pretraining): the loss is (1 − α)·CE + α·τ²·KL(teacher ‖ student), with α
decaying linearly to 0, so the teacher guides the early updates and the student is then free
to surpass it. Here the teacher is a shallower model trained first on the same text (its
training is reported, not charged: it already exists); the student's compute counts its own
training and the teacher's forward on every token while α > 0.
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
from lmforge.lab.stacking import cumulative_flops, saving
from lmforge.plots import plot_curves
from lmforge.recipes.scaling import shared_tokenizer
from lmforge.report import Report


@experiment(
    "inheritance",
    "A student distilled from a smaller trained model reaches its from-scratch loss in ≥ 25% "
    "fewer updates.",
    minutes=15,
)
def run(out_dir: Path, quick: bool) -> Report:
    seq, steps, width = 64, (60 if quick else 1200), (64 if quick else 128)
    source = corpus_source(out_dir, "shakespeare", quick)
    shared_tokenizer(out_dir, source, 512)
    vocab, train, decay = vocab_of(out_dir), schedule(steps, quick), steps // 2
    student, teacher = (
        decoder(2 if quick else 6, width, seq),
        decoder(1 if quick else 2, width, seq),
    )
    per_update = 16 * seq
    student_flops = flops_per_token(student, vocab, seq) * per_update
    teacher_flops = flops_per_token(teacher, vocab, seq, training=False) * per_update
    kd = {
        "teacher": str(out_dir / "runs" / "teacher" / "model"),
        "kd_weight": 0.5,
        "kd_schedule": "linear-decay",
        "kd_decay_steps": decay,
    }
    runs = {  # the teacher first: the inherited student reads its model
        "teacher": (teacher, {}, [(steps, 3 * teacher_flops)]),
        "scratch": (student, {}, [(steps, student_flops)]),
        "inherited": (
            student,
            kd,
            [(decay, student_flops + teacher_flops), (steps, student_flops)],
        ),
    }
    curves = {}
    for name, (shape, extra, per_step) in tqdm(runs.items(), desc="inheritance lab", unit="run"):
        _, run_dir = pretrain_run(out_dir, name, source, shape, {**train, **extra})
        s, losses, _ = val_curve(run_dir)
        curves[name] = (s, losses, cumulative_flops(s, per_step))
    setup = (
        f"Setup: student {student['n_layer']}×{width}, teacher {teacher['n_layer']}×{width} "
        f"(final val loss {curves['teacher'][1][-1]:.4f}), {steps} updates of 16×{seq} tokens "
        f"of {'a slice of ' if quick else ''}Shakespeare; α = 0.5 decaying to 0 by update "
        f"{decay}, τ = 1, full distribution."
    )
    return write_report(out_dir, curves, setup)


def write_report(out_dir: Path, curves: dict, setup: str) -> Report:
    target = curves["scratch"][1][-1]
    rows = [reach_row(name, curves[name], target) for name in ("scratch", "inherited")]
    reached = first_reach(curves["inherited"][0], curves["inherited"][1], target)
    at_scratch = first_reach(curves["scratch"][0], curves["scratch"][1], target)
    fewer = 1 - reached / at_scratch if reached else None
    less = saving(curves["scratch"], curves["inherited"], target)
    results = {"target": target, "fewer_updates": fewer, "less_compute": less, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(results))
    report = Report("Knowledge inheritance", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    report.text(setup)
    report.table(
        [
            "student",
            "final val loss",
            "update reaching scratch's final loss",
            "FLOPs to reach it (teacher forwards included)",
        ],
        rows,
        f"Reaching the scratch student's final validation loss {target:.4f}",
    )
    report.text(
        "The inherited student never reached the scratch student's final loss."
        if fewer is None
        else f"It took {100 * fewer:.1f}% fewer updates (target ≥ 25%: "
        f"{'met' if fewer >= 0.25 else 'not met'}) and {100 * less:.1f}% less compute, the "
        f"teacher's forwards included (target > 0: {'met' if less > 0 else 'not met'})."
    )
    figure = report.figure("inheritance.png", "Validation loss against updates")
    plot_curves(
        {n: (c[0], c[1]) for n, c in curves.items()},
        figure,
        title="Knowledge inheritance",
        xlabel="update",
        ylabel="validation loss",
    )
    return report
