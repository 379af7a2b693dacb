"""What the efficient-pretraining labs share: pretraining runs on one tokenizer and one set of
shards, their validation curves, and the compute each spent.

    corpus (a slice of it in --quick) ─► OUT/tokenizer.json + OUT/data ─► OUT/runs/NAME

Compute is counted as the model's matmul FLOPs per token (CausalLM.flops_per_token: 6N plus
attention) times the tokens trained on; a teacher's forward is a third of its training cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmforge.data import load_corpus
from lmforge.model import CausalLM, ModelConfig
from lmforge.recipes.pretrain import pretrain, resolve_config
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainResult

QUICK_CHARS = 120_000  # characters of the corpus a --quick run reads


def corpus_source(out_dir: Path, corpus: str, quick: bool) -> str:
    """The corpus name, or in --quick a file holding its first QUICK_CHARS characters."""
    if not quick:
        return corpus
    path = out_dir / f"{corpus}-slice.txt"
    if not path.exists():
        text = "\n\n".join(load_corpus(corpus).texts())[:QUICK_CHARS]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return str(path)


def pretrain_run(
    out_dir: Path, name: str, source: str, model: dict, train: dict, **more: Any
) -> tuple[TrainResult, Path]:
    """One `lmforge pretrain` run under OUT/runs/NAME with the lab's tokenizer and shards."""
    tokenizer = out_dir / "tokenizer.json"
    raw = {
        "run_dir": str(out_dir / "runs" / name),
        "model": {"preset": "tiny", **model},
        "data": {
            "corpus": source,
            "seq_len": model["max_seq_len"],
            "shards_dir": str(out_dir / "data"),
        },
        "tokenizer": {"path": str(tokenizer)},
        "train": {"save_every": 0, "log_every": 5, **train},
        **more,
    }
    cfg = resolve_config(raw)
    result, model_dir = pretrain(cfg, progress=False)
    return result, Path(cfg.run_dir)


def val_curve(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """(steps, validation losses, elapsed seconds) from the run's metrics.jsonl."""
    steps, losses, seconds = [], [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val_loss" in row:
            steps.append(row["step"])
            losses.append(row["val_loss"])
            seconds.append(row.get("elapsed", 0.0))
    return steps, losses, seconds


def first_reach(steps: list[int], losses: list[float], target: float) -> int | None:
    """The first evaluated step whose validation loss is at or below target (None: never)."""
    return next((s for s, loss in zip(steps, losses) if loss <= target), None)


def flops_per_token(model: dict, vocab_size: int, seq_len: int, training: bool = True) -> float:
    config = ModelConfig(**{**model, "vocab_size": vocab_size})
    with torch.device("meta"):
        return CausalLM(config).flops_per_token(seq_len, training=training)


def vocab_of(out_dir: Path) -> int:
    return Tokenizer.from_file(out_dir / "tokenizer.json").vocab_size


def decoder(depth: int, width: int, seq: int) -> dict[str, int]:
    """A lab model's shape: heads of 16 dimensions."""
    heads = width // 16
    return {
        "n_layer": depth,
        "d_model": width,
        "n_head": heads,
        "n_kv_head": heads,
        "max_seq_len": seq,
    }


def schedule(steps: int, quick: bool, evals: int = 30) -> dict[str, Any]:
    """A lab run's updates: batches of 16, lr 3e-3 with 5% warmup, `evals` evaluations."""
    return {
        "max_steps": steps,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": steps // 20,
        "eval_every": max(1, steps // (10 if quick else evals)),
        "eval_batches": 4 if quick else 20,
    }


def reach_row(name: str, curve: tuple[list, list, list], target: float) -> list:
    """[run, final loss, first update at or below target, FLOPs spent by then]."""
    steps, losses, flops = curve
    reach = first_reach(steps, losses, target)
    spent = f"{flops[steps.index(reach)]:.3g}" if reach is not None else "—"
    return [name, f"{losses[-1]:.4f}", reach if reach is not None else "never", spent]
