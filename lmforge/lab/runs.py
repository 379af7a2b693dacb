"""Pretraining runs that the architecture labs (moe, retnet, moefication) compare.

Every run of a lab reads the same corpus through the same tokenizer (trained by the first run,
then shared) and the same token shards, so that runs differ only in the model. `--quick`
trains on the first 120,000 characters of Shakespeare with the `tiny` preset; the full mode
on all of Shakespeare with the `small` one (4 layers, d_model 192).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lmforge.data.corpora import load_corpus
from lmforge.recipes.pretrain import pretrain, resolve_config
from lmforge.train import TrainResult

QUICK_CHARS = 120_000


def corpus(out_dir: Path, quick: bool) -> str:
    """The corpus argument for a lab's runs: Shakespeare, or a small slice of it (quick)."""
    if not quick:
        return "shakespeare"
    path = out_dir / "quick-corpus.txt"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(load_corpus("shakespeare").texts())[:QUICK_CHARS])
    return str(path)


def train_run(
    out_dir: Path, name: str, model: dict[str, Any], train: dict[str, Any], quick: bool
) -> tuple[TrainResult, Path]:
    """Pretrain one model of the lab in out_dir/runs/NAME; its result and saved model dir."""
    tokenizer = out_dir / "tokenizer.json"
    fields = dict(
        batch_size=8 if quick else 16,
        lr=2e-3,
        warmup_steps=5 if quick else 60,
        eval_batches=4 if quick else 16,
        log_every=5 if quick else 10,
        save_every=0,
        seed=0,
    )
    cfg = resolve_config(
        {
            "run_dir": str(out_dir / "runs" / name),
            "model": {"preset": "tiny" if quick else "small", **model},
            "data": {
                "corpus": corpus(out_dir, quick),
                "seq_len": 64 if quick else 128,
                "shards_dir": str(out_dir / "data"),
            },
            "tokenizer": {
                "path": str(tokenizer) if tokenizer.exists() else None,
                "vocab_size": 512 if quick else 2048,
            },
            "train": {**fields, **train},
        }
    )
    result, model_dir = pretrain(cfg, progress=False)
    if not tokenizer.exists():
        shutil.copyfile(model_dir / "tokenizer.json", tokenizer)
    return result, model_dir


def history(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl records of a run."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def curve(records: list[dict[str, Any]], key: str, x: str = "step") -> tuple[list, list]:
    """(xs, ys) of the records that hold `key`."""
    rows = [r for r in records if key in r]
    return [r[x] for r in rows], [r[key] for r in rows]


def step_seconds(result: TrainResult, tokens_per_step: int) -> float:
    """Seconds of one optimizer step (evaluation and checkpoints not counted)."""
    return tokens_per_step / max(result.tokens_per_s, 1e-9)
