"""`lmforge scaling`: train a ladder of small models, fit a loss law, predict a larger run.

    lmforge scaling run [--out DIR] [--layers "[1, 1, 2, 2, 3, 4]"]
                        [--widths "[16, 32, 32, 48, 64, 96]"]
    lmforge scaling fit [--out DIR] [--bootstrap 1000]
    lmforge scaling predict [--out DIR] --layers 6 --width 160 [--train]

Each rung of the ladder is one `lmforge pretrain` run of a native decoder on its
compute-optimal budget (Hoffmann et al. 2022): D = r·N tokens for N parameters, N counting
the matrices that do work (every linear layer, the tied head included; not the lookup), and
C = FLOPs per token × D (model.flops_per_token: 6N plus attention). The rungs share one
tokenizer and one set of token shards; each writes a row of DIR/ladder.jsonl (a finished
rung is not trained again). `fit` fits L(C) = a·C^b + c and L(N, D) = E + A/N^α + B/D^β
(train/scaling.py) into DIR/fit.json and DIR/fit.png; `predict` reads the fits, states the
loss of a larger shape with its 95% bootstrap interval and, with --train, trains it and
writes the measured point beside the prediction (DIR/prediction.json, prediction.png).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.atomic import atomic_write_json, atomic_write_text
from lmforge.config import arg
from lmforge.data import load_corpus
from lmforge.errors import ConfigError
from lmforge.model import CausalLM, ModelConfig
from lmforge.plots import plot_scaling
from lmforge.recipes.action import Action
from lmforge.recipes.pretrain import pretrain, resolve_config
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer
from lmforge.train.scaling import NAMES, Fit, compute_optimal_tokens, fit_law


@dataclass
class RungSettings:
    out: str = "runs/scaling"  # the ladder's directory: ladder.jsonl, fit.json, runs/, plots
    corpus: str = "shakespeare"  # built-in corpus name, or a text file, folder or .jsonl file
    vocab_size: int = 512  # the shared BPE's vocabulary (small, so the head stays small)
    seq_len: int = 64  # tokens per training sequence
    batch_size: int = 16  # sequences per update
    head_dim: int = 16  # width of one attention head (n_head = width / head_dim)
    tokens_per_parameter: float = 20.0  # r in D = r·N, the compute-optimal budget
    lr: float = 3e-3  # peak learning rate (cosine decay to a tenth, 5% warmup)
    eval_batches: int = 0  # validation batches per rung (0 = the whole validation split)
    seed: int = 1337  # seeds every rung alike


@dataclass
class ScalingRunConfig(RungSettings):
    layers: list[int] = arg(factory=lambda: [1, 1, 2, 2, 3, 4])  # depth of each rung
    widths: list[int] = arg(factory=lambda: [16, 32, 32, 48, 64, 96])  # d_model of each rung


@dataclass
class ScalingFitConfig:
    out: str = "runs/scaling"  # the ladder's directory (`lmforge scaling run --out`)
    bootstrap: int = 1000  # bootstrap refits for the 95% intervals
    seed: int = 0  # seeds the bootstrap


@dataclass
class ScalingPredictConfig(RungSettings):
    layers: int = 6  # depth of the run to predict
    width: int = 160  # d_model of the run to predict
    train: bool = False  # also train that run and compare the measured loss


def shape(settings: RungSettings, n_layer: int, width: int, vocab: int) -> ModelConfig:
    if width % settings.head_dim:
        raise ConfigError(
            f"width {width} is not a multiple of head_dim {settings.head_dim}",
            fix="use widths that are multiples of {head_dim}",
        )
    n_head = width // settings.head_dim
    return ModelConfig(
        vocab_size=vocab,
        d_model=width,
        n_layer=n_layer,
        n_head=n_head,
        max_seq_len=settings.seq_len,
    )


def work_parameters(config: ModelConfig) -> int:
    """N: weights of the linear layers (the tied head included, the lookup not)."""
    with torch.device("meta"):
        model = CausalLM(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def rung_budget(settings: RungSettings, config: ModelConfig) -> dict[str, Any]:
    """N, D, the updates that hold D tokens, and C = FLOPs per token × D."""
    params = work_parameters(config)
    tokens_per_step = settings.batch_size * settings.seq_len
    steps = max(
        1,
        math.ceil(compute_optimal_tokens(params, settings.tokens_per_parameter) / tokens_per_step),
    )
    with torch.device("meta"):
        per_token = CausalLM(config).flops_per_token(settings.seq_len)
    tokens = steps * tokens_per_step
    return {"params": params, "tokens": tokens, "steps": steps, "flops": per_token * tokens}


def shared_tokenizer(out: str | Path, corpus: str, vocab_size: int) -> Path:
    """OUT/tokenizer.json, trained once on the corpus and shared by every run under OUT."""
    path = Path(out) / "tokenizer.json"
    if not path.exists():
        texts = list(load_corpus(corpus).texts())
        path.parent.mkdir(parents=True, exist_ok=True)
        Tokenizer.train(texts, vocab_size=vocab_size).save(path)
    return path


MODEL_FIELDS = ("d_model", "n_layer", "n_head", "n_kv_head", "max_seq_len")


def train_rung(settings: RungSettings, n_layer: int, width: int, progress: bool) -> dict[str, Any]:
    """One pretraining run on its compute-optimal budget; its row of the ladder."""
    out = Path(settings.out)
    tokenizer = shared_tokenizer(out, settings.corpus, settings.vocab_size)
    vocab = Tokenizer.from_file(tokenizer).vocab_size
    config = shape(settings, n_layer, width, vocab)
    budget = rung_budget(settings, config)
    name = f"L{n_layer}-d{width}"
    steps = budget["steps"]
    raw = {
        "run_dir": str(out / "runs" / name),
        "model": {"preset": "tiny", **{k: getattr(config, k) for k in MODEL_FIELDS}},
        "data": {
            "corpus": settings.corpus,
            "seq_len": settings.seq_len,
            "shards_dir": str(out / "data"),
        },
        "tokenizer": {"path": str(tokenizer)},
        "train": {
            "max_steps": steps,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "warmup_steps": max(1, steps // 20),
            "eval_every": 0,
            "eval_batches": settings.eval_batches,
            "save_every": 0,
            "log_every": max(1, steps // 50),
            "seed": settings.seed,
        },
    }
    result, _ = pretrain(resolve_config(raw), progress=progress)
    return {"name": name, "layers": n_layer, "width": width, **budget, "val_loss": result.val_loss}


def read_ladder(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / "ladder.jsonl"
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: no ladder was trained there",
            fix="run lmforge scaling run {out=DIR} first",
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def scaling_run(cfg: ScalingRunConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Train every rung not yet in DIR/ladder.jsonl; the ladder's rows, smallest first."""
    if len(cfg.layers) != len(cfg.widths) or not cfg.layers:
        raise ConfigError(
            f"layers and widths need one entry per rung; got {len(cfg.layers)} and "
            f"{len(cfg.widths)}",
            fix="give as many {layers} as {widths}",
        )
    path = Path(cfg.out) / "ladder.jsonl"
    rows = read_ladder(cfg.out) if path.is_file() else []
    for n_layer, width in zip(cfg.layers, cfg.widths):
        if any(r["layers"] == n_layer and r["width"] == width for r in rows):
            continue
        rows.append(train_rung(cfg, n_layer, width, progress))
        rows.sort(key=lambda r: r["flops"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    if progress:
        for r in rows:
            print(
                f"{r['name']:12} N={r['params']:>9,}  D={r['tokens']:>11,}  "
                f"C={r['flops']:.3g}  loss {r['val_loss']:.4f}"
            )
    return rows


def fit_ladder(rows: list[dict[str, Any]], bootstrap: int, seed: int) -> dict[str, Fit]:
    """L(C) always; L(N, D) when the ladder has more rungs than its five parameters. On a
    compute-optimal ladder D = r·N, so L(N, D) mostly says how loss moves along that line."""
    loss = [r["val_loss"] for r in rows]
    flops = np.asarray([r["flops"] for r in rows])
    fits = {"L(C)": fit_law("L(C)", flops, loss, bootstrap=bootstrap, seed=seed)}
    if len(rows) > len(NAMES["L(N,D)"]):
        sizes = np.asarray([[r["params"], r["tokens"]] for r in rows])
        fits["L(N,D)"] = fit_law("L(N,D)", sizes, loss, bootstrap=bootstrap, seed=seed)
    return fits


def read_fits(out: str | Path) -> dict[str, Fit]:
    path = Path(out) / "fit.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist", fix="run lmforge scaling fit {out=DIR} first")
    return {form: Fit(**fields) for form, fields in json.loads(path.read_text()).items()}


def scaling_fit(cfg: ScalingFitConfig, progress: bool = True) -> dict[str, Fit]:
    """Both laws fitted to DIR/ladder.jsonl, written to DIR/fit.json and drawn in DIR/fit.png."""
    rows = read_ladder(cfg.out)
    fits = fit_ladder(rows, cfg.bootstrap, cfg.seed)
    atomic_write_json(
        Path(cfg.out) / "fit.json", {k: dataclasses.asdict(f) for k, f in fits.items()}
    )
    draw(Path(cfg.out) / "fit.png", rows, fits["L(C)"])
    if progress:
        for form, fit in fits.items():
            spans = fit.param_intervals()
            shown = ", ".join(
                f"{n} {v:.4g} [{spans[n][0]:.4g}, {spans[n][1]:.4g}]"
                for n, v in zip(fit.names, fit.params)
            )
            print(f"{form}: {shown}; rmse of log loss {fit.rmse:.4f}")
    return fits


def draw(path: Path, rows: list[dict[str, Any]], fit: Fit, point: dict | None = None) -> Path:
    """The ladder's points, the fitted L(C) through them and on to the predicted point."""
    top = max([r["flops"] for r in rows] + ([point["flops"]] if point else []))
    xs = np.geomspace(min(r["flops"] for r in rows) / 1.5, top * 1.5, 100).tolist()
    return plot_scaling(
        {r["name"]: (r["flops"], r["val_loss"]) for r in rows},
        (xs, [fit.predict(x) for x in xs]),
        path,
        prediction=(point["flops"], point["predicted"], *point["interval"]) if point else None,
        measured=(point["flops"], point["val_loss"]) if point and "val_loss" in point else None,
        title="Loss against training compute: L(C) = a·C^b + c",
    )


def scaling_predict(cfg: ScalingPredictConfig, progress: bool = True) -> dict[str, Any]:
    """The fitted laws' loss for a larger shape (with intervals); with --train, the measured one."""
    fits = read_fits(cfg.out)
    rows = read_ladder(cfg.out)
    vocab = Tokenizer.from_file(shared_tokenizer(cfg.out, cfg.corpus, cfg.vocab_size)).vocab_size
    budget = rung_budget(cfg, shape(cfg, cfg.layers, cfg.width, vocab))
    by_compute = fits["L(C)"]
    point = {
        "name": f"L{cfg.layers}-d{cfg.width}",
        **budget,
        "compute_ratio": budget["flops"] / max(r["flops"] for r in rows),
        "predicted": by_compute.predict(budget["flops"]),
        "interval": list(by_compute.interval(budget["flops"])),
    }
    if "L(N,D)" in fits:
        point["predicted_nd"] = fits["L(N,D)"].predict(budget["params"], budget["tokens"])
        point["interval_nd"] = list(fits["L(N,D)"].interval(budget["params"], budget["tokens"]))
    if cfg.train:
        point["val_loss"] = train_rung(cfg, cfg.layers, cfg.width, progress)["val_loss"]
        point["error"] = (point["predicted"] - point["val_loss"]) / point["val_loss"]
    atomic_write_json(Path(cfg.out) / "prediction.json", point)
    draw(Path(cfg.out) / "prediction.png", rows, by_compute, point)
    if progress:
        low, high = point["interval"]
        text = f"{point['name']}: C={point['flops']:.3g} "
        text += f"({point['compute_ratio']:.1f}× the ladder's largest); "
        text += f"L(C) predicts {point['predicted']:.4f} [{low:.4f}, {high:.4f}]"
        if "val_loss" in point:
            text += f"; measured {point['val_loss']:.4f} ({100 * point['error']:+.2f}%)"
        print(text)
    return point


ACTIONS: Registry[Action] = Registry("scaling action")
ACTIONS.add(
    "run",
    Action("train the ladder of sizes on compute-optimal budgets", ScalingRunConfig, scaling_run),
)
ACTIONS.add(
    "fit", Action("fit L(C) and L(N, D) with bootstrap intervals", ScalingFitConfig, scaling_fit)
)
ACTIONS.add(
    "predict",
    Action("predict a larger run's loss (and train it)", ScalingPredictConfig, scaling_predict),
)
