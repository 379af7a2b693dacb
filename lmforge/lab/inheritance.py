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
    first_reach,
    flops_per_token,
    pretrain_run,
    shared_tokenizer,
    val_curve,
    vocab_of,
)
from lmforge.lab.stacking import cumulative_flops
from lmforge.plots import plot_curves
from lmforge.report import Report


@experiment(
    "inheritance",
    "A student distilled from a smaller trained model reaches its from-scratch loss in ≥ 25% "
    "fewer updates.",
    minutes=40,
)
def run(out_dir: Path, quick: bool) -> Report:
    seq, steps = 64, (60 if quick else 1200)
    source = corpus_source(out_dir, "shakespeare", quick)
    shared_tokenizer(out_dir, source, 512)
    vocab = vocab_of(out_dir)
    width = 64 if quick else 128
    heads = {"n_head": width // 16, "n_kv_head": width // 16, "max_seq_len": seq}
    student = {"n_layer": 2 if quick else 6, "d_model": width, **heads}
    teacher = {"n_layer": 1 if quick else 2, "d_model": width, **heads}
    train = {
        "max_steps": steps,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": steps // 20,
        "eval_every": max(1, steps // 30),
        "eval_batches": 4 if quick else 20,
    }
    decay = steps // 2
    per_update = 16 * seq
    student_flops = flops_per_token(student, vocab, seq) * per_update
    teacher_flops = flops_per_token(teacher, vocab, seq, training=False) * per_update
    runs = {
        "teacher": (teacher, {}, [(steps, flops_per_token(teacher, vocab, seq) * per_update)]),
        "scratch": (student, {}, [(steps, student_flops)]),
    }
    curves = {}
    for name, (shape, extra, per_step) in tqdm(runs.items(), desc="inheritance lab", unit="run"):
        _, run_dir = pretrain_run(out_dir, name, source, shape, {**train, **extra})
        s, losses, _ = val_curve(run_dir)
        curves[name] = (s, losses, cumulative_flops(s, per_step))
    kd = {
        "teacher": str(out_dir / "runs" / "teacher" / "model"),
        "kd_weight": 0.5,
        "kd_schedule": "linear-decay",
        "kd_decay_steps": decay,
    }
    _, run_dir = pretrain_run(out_dir, "inherited", source, student, {**train, **kd})
    s, losses, _ = val_curve(run_dir)
    curves["inherited"] = (
        s,
        losses,
        cumulative_flops(s, [(decay, student_flops + teacher_flops), (steps, student_flops)]),
    )
    target = curves["scratch"][1][-1]
    rows = []
    for name in ("scratch", "inherited"):
        s, losses, flops = curves[name]
        reach = first_reach(s, losses, target)
        rows.append(
            [
                name,
                f"{losses[-1]:.4f}",
                reach or "never",
                f"{flops[s.index(reach)]:.3g}" if reach else "—",
            ]
        )
    reached = first_reach(curves["inherited"][0], curves["inherited"][1], target)
    at_scratch = first_reach(curves["scratch"][0], curves["scratch"][1], target)
    fewer = 1 - reached / at_scratch if reached else None
    less = (
        (
            1
            - curves["inherited"][2][curves["inherited"][0].index(reached)]
            / curves["scratch"][2][-1]
        )
        if reached
        else None
    )
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "target": target,
                "fewer_updates": fewer,
                "less_compute": less,
                "rows": rows,
                "teacher_loss": curves["teacher"][1][-1],
            }
        )
    )
    report = Report("Knowledge inheritance", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    report.text(
        f"Setup: student {student['n_layer']}×{width}, teacher {teacher['n_layer']}×{width} "
        f"(final val loss {curves['teacher'][1][-1]:.4f}), {steps} updates of 16×{seq} tokens "
        f"of {'a slice of ' if quick else ''}Shakespeare; α = 0.5 decaying to 0 by update "
        f"{decay}, τ = 1, full distribution."
    )
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
