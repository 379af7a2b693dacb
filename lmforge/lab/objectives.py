"""Pretraining objectives at equal compute: next-token prediction, prefix-LM, UL2's mixture
of denoisers and multi-token prediction, scored by the one thing all of them must give,
next-token validation loss, and by a downstream score: each pretrained model tuned for the same
few updates on a labelled task, then its test accuracy.

The claim (Tay et al. 2022, UL2; Gloeckle et al. 2024): a better objective buys more per
FLOP. Denoising trains the decoder on spans and bidirectional prefixes, the unified
text-to-text form of T5 and BART; multi-token heads ask the shared trunk for tokens t+1..t+4.
Each run has the same model, data and schedule shape and the same training FLOPs: the
trunk's FLOPs per token plus, for multi-token, the extra heads' (one unembedding each), so
multi-token gets proportionally fewer updates.

The downstream task fits each corpus: BBC News topics (5 classes, the article's first tokens)
for the Shakespeare models, and for People's Daily noun or verb of a marked word (2 classes,
the word put before its sentence so that the 64-token window keeps it). Every model, and one
of the same shape that was never pretrained, gets the same tune: all weights, 200 updates of
16 examples at lr 1e-3, scored by the likelihood of each class's label word; the UL2 model
reads its S-denoiser's mode token before each example, as UL2 is fine-tuned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lmforge.config import from_dict
from lmforge.data.labelled import load_labelled
from lmforge.hub import load_model
from lmforge.lab.base import experiment
from lmforge.lab.pretraining import (
    corpus_source,
    decoder,
    flops_per_token,
    pretrain_run,
    schedule,
    val_curve,
    vocab_of,
)
from lmforge.model import CausalLM
from lmforge.model.hf import save_hf_dir
from lmforge.plots import plot_bars, plot_curves
from lmforge.recipes.finetune import FinetuneConfig, finetune
from lmforge.recipes.scaling import shared_tokenizer
from lmforge.report import Report
from lmforge.tokenizer import Tokenizer
from lmforge.train.objectives.denoise import MODE_TOKEN

OBJECTIVES = {
    "causal-lm": {},
    "prefix-lm": {},
    "ul2": {},
    "multi-token": {"n_future": 4},
}


TUNE_PREFIX = {"ul2": MODE_TOKEN.format("S")}  # UL2 is tuned in its S (prefix-LM) mode


def extra_head_flops(name: str, width: int, vocab: int) -> float:
    """Training FLOPs per token of multi-token's extra heads (6 · d · V each)."""
    return 6.0 * width * vocab * (OBJECTIVES[name].get("n_future", 1) - 1)


def bbc_task(out_dir: Path) -> dict[str, Any]:
    return {"source": "bbc-news", "template": "{text}\nTopic:"}


def pos_task(out_dir: Path) -> dict[str, Any]:
    """People's Daily noun or verb questions, the word put before its sentence, in one file
    that `lmforge finetune` splits into train, validation and test (stratified, seed 0)."""
    path = out_dir / "pos.jsonl"
    if not path.exists():
        rows = []
        for split in ("train", "validation", "test"):
            for e in load_labelled("peoples-daily-pos", split):
                sentence, word = e.text.split("\n")
                record = {"text": f"{word}\n{sentence}", "label": e.label}
                rows.append(json.dumps(record, ensure_ascii=False) + "\n")
        path.write_text("".join(rows), encoding="utf-8")
    data = {"source": str(path), "template": "{text}\n词性："}
    return {**data, "words": {"noun": "名词", "verb": "动词"}}


DOWNSTREAM = {  # corpus → (its tuning task, what `lmforge finetune` reads of it)
    "shakespeare": ("BBC News topics", bbc_task),
    "peoples-daily": ("People's Daily noun or verb", pos_task),
}


def tune_accuracy(out_dir: Path, corpus: str, name: str, model_dir: Path, quick: bool) -> float:
    """Test accuracy of the model in `model_dir` after the lab's short tune (all weights)."""
    steps = 4 if quick else 200
    task = DOWNSTREAM[corpus][1](out_dir)
    task["template"] = TUNE_PREFIX.get(name, "") + task["template"]
    cfg = from_dict(FinetuneConfig, {
        "run_dir": str(out_dir / "tunes" / name), "model": str(model_dir), "method": "full",
        "data": {**task, "max_length": 64,
                 "max_train": 32 if quick else 0, "max_eval": 12 if quick else 0},
        "train": {"max_steps": steps, "batch_size": 16, "lr": 1e-3, "eval_every": steps,
                  "warmup_steps": max(1, steps // 10), "eval_batches": 4, "save_every": 0},
    })  # fmt: skip
    return finetune(cfg, progress=False)["test_accuracy"]


def untrained(out_dir: Path, like: Path) -> Path:
    """A model of the same shape and tokenizer as the plain one in `like` (no extra heads or
    tokens), never trained (seed 0)."""
    path = out_dir / "runs" / "untrained" / "model"
    if not (path / "model.safetensors").exists():
        torch.manual_seed(0)
        save_hf_dir(CausalLM(load_model(like).config), path, Tokenizer.from_file(like))
    return path


def corpus_runs(out_dir: Path, corpus: str, quick: bool) -> tuple[dict[str, tuple], dict]:
    """Every objective on one corpus: (name → (steps, next-token val losses, FLOPs),
    name → downstream accuracy, with "not pretrained" for a model that never was)."""
    source = corpus_source(out_dir, corpus, quick)
    shared_tokenizer(out_dir, source, 512)
    vocab, seq, width = vocab_of(out_dir), 64, 64 if quick else 128
    steps = 40 if quick else 800  # causal-lm's; a costlier objective gets fewer (equal FLOPs)
    model = decoder(2 if quick else 4, width, seq)
    base = flops_per_token(model, vocab, seq)
    curves, scores = {}, {}
    for name, options in tqdm(OBJECTIVES.items(), desc=f"objectives on {corpus}", unit="run"):
        per_token = base + extra_head_flops(name, width, vocab)
        updates = round(steps * base / per_token)
        train = {**schedule(updates, quick, 20), "objective": name, "objective_options": options}
        _, run_dir = pretrain_run(out_dir, name, source, model, train)
        s, losses, _ = val_curve(run_dir)
        curves[name] = (s, losses, [step * 16 * seq * per_token for step in s])
        scores[name] = tune_accuracy(out_dir, corpus, name, run_dir / "model", quick)
    scratch = untrained(out_dir, out_dir / "runs" / "causal-lm" / "model")
    scores["not pretrained"] = tune_accuracy(out_dir, corpus, "untrained", scratch, quick)
    return curves, scores


@experiment(
    "objectives",
    "At equal compute, denoising and multi-token objectives against next-token prediction.",
    minutes=20,
)
def run(out_dir: Path, quick: bool) -> Report:
    corpora = ["shakespeare"] if quick else ["shakespeare", "peoples-daily"]
    report = Report("Pretraining objectives at equal compute", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    results = {}
    for corpus in corpora:
        curves, scores = corpus_runs(out_dir / corpus, corpus, quick)
        results[corpus] = {
            n: {"val_loss": c[1][-1], "flops": c[2][-1], "accuracy": scores[n]}
            for n, c in curves.items()
        }
        results[corpus]["not pretrained"] = {"accuracy": scores["not pretrained"]}
        corpus_report(report, corpus, curves, results[corpus], quick)
    (out_dir / "results.json").write_text(json.dumps(results))
    return report


def corpus_report(
    report: Report, corpus: str, curves: dict[str, tuple], rows: dict[str, dict], quick: bool
) -> None:
    report.table(
        ["objective", "next-token val loss", "training FLOPs", "tuned accuracy"],
        [
            [
                n,
                f"{r['val_loss']:.4f}" if "val_loss" in r else "–",
                f"{r['flops']:.3g}" if "flops" in r else "0",
                f"{r['accuracy']:.1%}",
            ]
            for n, r in rows.items()
        ],  # fmt: skip
        f"{corpus}{' (a slice)' if quick else ''}: at equal training FLOPs; accuracy after the "
        f"short tune on {DOWNSTREAM[corpus][0]}",
    )
    trained = {n: r for n, r in rows.items() if "val_loss" in r}
    best_loss = min(trained, key=lambda n: trained[n]["val_loss"])
    best_score = max(trained, key=lambda n: trained[n]["accuracy"])
    report.text(
        f"Lowest next-token loss on {corpus}: {best_loss}; best tuned accuracy: {best_score}."
    )
    figure = report.figure(f"{corpus}.png", f"{corpus}: next-token validation loss per FLOP")
    plot_curves(
        {n: (c[2], c[1]) for n, c in curves.items()},
        figure,
        title=corpus,
        xlabel="training FLOPs",
        ylabel="next-token validation loss",
    )
    figure = report.figure(f"{corpus}-tuned.png", f"{corpus}: test accuracy after the short tune")
    plot_bars({n: r["accuracy"] for n, r in rows.items()}, figure, title=corpus,
              ylabel="test accuracy")  # fmt: skip
