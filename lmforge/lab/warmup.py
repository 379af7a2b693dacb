"""Learning-rate warmup: the same model and data, trained at rising peak learning rates
with and without a linear warmup.

The claim (Goyal et al., 2017; Xiong et al., 2020 for Pre-LN transformers): early
updates are large and badly aimed while Adam's second-moment estimates are still
noisy, so a high learning rate applied from step 0 spoils or diverges a run that
a warmup ramp carries through. The report tabulates final validation loss per
(lr, warmup) pair and overlays the training curves.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from lmforge.errors import TrainingDivergedError
from lmforge.lab.base import experiment
from lmforge.lab.report import Report


def _curve(run_dir: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row:
                steps.append(row["step"])
                losses.append(row["loss"])
    return steps, losses


@experiment(
    "warmup", "Warmup lets a transformer train at learning rates that fail without it.", minutes=12
)
def run(out_dir: Path, quick: bool) -> Report:
    from lmforge.plots import plot_curves
    from lmforge.recipes.pretrain import pretrain, resolve_config

    lrs = [3e-3, 3e-2] if quick else [1e-3, 3e-3, 1e-2, 3e-2]
    steps = 40 if quick else 300
    warmups = [0, steps // 5]
    rows, curves = [], {}
    tokenizer = out_dir / "tokenizer.json"
    grid = [(lr, w) for lr in lrs for w in warmups]
    for lr, warmup in tqdm(grid, desc="warmup lab", unit="run"):
        name = f"lr{lr:g}-warmup{warmup}"
        cfg = resolve_config(
            {
                "run_dir": str(out_dir / "runs" / name),
                "model": {"preset": "tiny" if quick else "small", "max_seq_len": 128},
                "data": {
                    "corpus": "shakespeare",
                    "seq_len": 128,
                    "shards_dir": str(out_dir / "data"),
                },
                "tokenizer": {
                    "path": str(tokenizer) if tokenizer.exists() else None,
                    "vocab_size": 1024,
                },
                "train": {
                    "max_steps": steps,
                    "lr": lr,
                    "warmup_steps": warmup,
                    "batch_size": 16,
                    "eval_every": steps,
                    "eval_batches": 8,
                    "save_every": steps,
                    "log_every": 5,
                    "min_lr_ratio": 0.1,
                    "grad_clip": 0.0,
                },
            }
        )
        try:
            result, model_dir = pretrain(cfg, progress=False)
            final = f"{result.val_loss:.3f}"
            if not tokenizer.exists():
                tokenizer.write_bytes((model_dir / "tokenizer.json").read_bytes())
        except TrainingDivergedError:
            final = "diverged"
        rows.append([f"{lr:g}", warmup, final])
        curves[name] = _curve(Path(cfg.run_dir))
    report = Report("Learning-rate warmup", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    report.text(
        f"Setup: preset `{'tiny' if quick else 'small'}`, Shakespeare, {steps} steps of 16×128 "
        "tokens, AdamW with cosine decay, no gradient clipping (clipping would hide the effect)."
    )
    report.table(
        ["peak lr", "warmup steps", "final validation loss"],
        rows,
        "Final validation loss (lower is better)",
    )
    plot_curves(
        curves,
        report.figure("curves.png", "Training loss, with and without warmup"),
        title="Warmup vs none",
        xlabel="step",
        ylabel="training loss",
    )
    return report
