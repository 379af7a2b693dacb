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
from lmforge.plots import plot_curves
from lmforge.recipes.pretrain import pretrain, resolve_config
from lmforge.report import Report


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


def _config(out_dir: Path, name: str, lr: float, warmup: int, steps: int, quick: bool) -> dict:
    tokenizer = out_dir / "tokenizer.json"  # trained by the first run, shared by the rest
    train = dict(
        max_steps=steps,
        lr=lr,
        warmup_steps=warmup,
        batch_size=16,
        eval_every=steps,
        eval_batches=8,
        save_every=steps,
        log_every=5,
        min_lr_ratio=0.1,
        grad_clip=0.0,
    )
    return {
        "run_dir": str(out_dir / "runs" / name),
        "model": {"preset": "tiny" if quick else "small", "max_seq_len": 128},
        "data": {"corpus": "shakespeare", "seq_len": 128, "shards_dir": str(out_dir / "data")},
        "tokenizer": {"path": str(tokenizer) if tokenizer.exists() else None, "vocab_size": 1024},
        "train": train,
    }


def _verdict(rows: list[list]) -> str:
    """What this run showed, read off the table rather than asserted."""
    by_lr: dict[str, dict[int, float]] = {}
    for lr, warmup, final in rows:
        by_lr.setdefault(lr, {})[warmup] = float("inf") if final == "diverged" else float(final)
    helped = [lr for lr, f in by_lr.items() if f[max(f)] < f[min(f)]]
    hurt = [lr for lr in by_lr if lr not in helped]
    text = f"Warmup gave the lower final loss at peak lr {', '.join(helped) or 'none'}"
    text += f"; no warmup did at {', '.join(hurt)}." if hurt else "."
    return text + (
        " At small learning rates a ramp mostly costs steps; its benefit is expected to show as "
        "the peak rate rises, where starting cold spoils or diverges the run."
    )


@experiment(
    "warmup", "Warmup lets a transformer train at learning rates that fail without it.", minutes=12
)
def run(out_dir: Path, quick: bool) -> Report:
    lrs = [3e-3, 3e-2] if quick else [1e-3, 1e-2, 3e-2, 1e-1]
    steps = 40 if quick else 300
    rows, curves = [], {}
    grid = [(lr, warmup) for lr in lrs for warmup in (0, steps // 5)]
    for lr, warmup in tqdm(grid, desc="warmup lab", unit="run"):
        name = f"lr{lr:g}-warmup{warmup}"
        cfg = resolve_config(_config(out_dir, name, lr, warmup, steps, quick))
        try:
            result, model_dir = pretrain(cfg, progress=False)
            final = f"{result.val_loss:.3f}"
            if not (out_dir / "tokenizer.json").exists():
                (out_dir / "tokenizer.json").write_bytes(
                    (model_dir / "tokenizer.json").read_bytes()
                )
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
    report.text(_verdict(rows))
    figure = report.figure("curves.png", "Training loss, with and without warmup")
    plot_curves(curves, figure, title="Warmup vs none", xlabel="step", ylabel="training loss")
    return report
