"""Fine-tuning a real or native model with any delta method, all weights, or none.

    method: a delta method (peft.METHODS) ─┐
            or a TRAINING_MODES entry ─────┴─► model to train ─► train() ─► delta/ + results.json
    task:   a FINETUNE_TASKS entry ──────────► batches, objective, test metrics  ─┘

Checkpoints hold only the trainable tensors, so a LoRA run checkpoints and resumes its
few thousand parameters, not the base model.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmforge import knowledge, peft  # noqa: F401  (knowledge registers its delta method)
from lmforge.atomic import atomic_write_json
from lmforge.config import arg, load
from lmforge.errors import ConfigError
from lmforge.hub import LOADERS, load_model, load_tokenizer
from lmforge.model.continuations import NORMALIZERS
from lmforge.peft import DeltaMethod, count_parameters
from lmforge.recipes.finetune_tasks import FINETUNE_TASKS, TaskData
from lmforge.recipes.rundir import check_resume, save_config
from lmforge.registry import Registry
from lmforge.train import (
    Objective,
    TrainConfig,
    build_objective,
    default_objective,
    train,
    validation_loss,
)
from lmforge.train.distributed import setup as setup_distributed

# ── what trains: a delta method, or the whole model ─────────────────────────────────────────


@dataclass(frozen=True)
class TrainingMode:
    prepare: Callable[[FinetuneConfig], tuple[nn.Module, DeltaMethod | None]]  # the model to train
    trains: bool = True  # the loop runs (False: the untuned model is only evaluated)


def _whole_model(trains: bool) -> Callable[[FinetuneConfig], tuple[nn.Module, None]]:
    def prepare(cfg: FinetuneConfig) -> tuple[nn.Module, None]:
        model = load_model(cfg.model, backend=cfg.backend)
        return model.requires_grad_(trains), None

    return prepare


def _with_delta(cfg: FinetuneConfig) -> tuple[nn.Module, DeltaMethod]:
    """The method is built first, so the base loads as it needs (QLoRA: quantized as read)."""
    delta = peft.build(cfg.method, cfg.delta)
    model = load_model(cfg.model, backend=cfg.backend, **delta.load_options())
    delta.apply(model, seed=cfg.train.seed)  # the same seed: the same initial delta
    return delta.model, delta


TRAINING_MODES: Registry[TrainingMode] = Registry("training mode")
TRAINING_MODES.add("full", TrainingMode(_whole_model(True)))  # every weight trains
TRAINING_MODES.add("none", TrainingMode(_whole_model(False), trains=False))  # the baseline


def method_names() -> list[str]:
    """Every `method`: the delta methods and the training modes."""
    return sorted([*peft.METHODS, *TRAINING_MODES])


def training_mode(method: str) -> TrainingMode:
    """TRAINING_MODES[method], or training with the delta method of that name."""
    if method in TRAINING_MODES:
        return TRAINING_MODES.get(method)
    if method in peft.METHODS:
        return TrainingMode(_with_delta)
    raise ConfigError(
        f"unknown method {method!r}", fix="choose {method} from " + ", ".join(method_names())
    )


# ── config ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class FinetuneDataConfig:
    source: str = "bbc-news"  # labelled dataset/JSONL; a corpus (causal-lm); instruction file(s)
    eval: str = ""  # classification: a labelled JSONL for validation (empty: split the source)
    test: str = ""  # classification: a labelled JSONL for the test score (empty: split the source)
    split_seed: int = 0  # classification: seed of the stratified train/validation/test split
    template: str = "{text}\nTopic:"  # classification prompt; {text} is the example's text
    labels: list[str] = field(default_factory=list)  # class names (empty: those of the data)
    words: dict[str, str] = field(default_factory=dict)  # label → word scored (default: label)
    normalize: str = arg("sum", choices=NORMALIZERS.names)  # label score: sum | mean | char
    max_length: int = 256  # tokens per example (classification) or window (causal-lm)
    max_train: int = 0  # use at most this many training examples (0 = all)
    max_eval: int = 0  # score at most this many test examples (0 = all)
    pack: bool = False  # sft: several examples per row, no attention across them
    holdout: int = 20  # sft: every n-th record is held out for validation loss (0 = none)
    skip_bad: bool = False  # skip malformed records or files (counted) instead of failing


@dataclass
class FinetuneConfig:
    run_dir: str = "runs/finetune"  # where checkpoints, metrics, the delta and results go
    nproc: int = 1  # processes on this machine: N > 1 runs this command under torchrun
    model: str = "smollm2-135m-instruct"  # embedded model name or transformers directory
    backend: str = arg("native", choices=LOADERS.names)  # native | hf
    method: str = arg("lora", choices=method_names)  # a delta method, full or none (evaluate)
    delta: dict[str, Any] = field(default_factory=dict)  # the method's fields, e.g. {r: 8}
    task: str = arg("classification", choices=FINETUNE_TASKS.names)  # what the model learns
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        training_mode(self.method)
        FINETUNE_TASKS.get(self.task).check(self)
        if self.train.distributed == "fsdp":
            raise ConfigError(
                "finetune keeps the frozen base whole on every rank, so it runs under DDP",
                fix="use {train.distributed=ddp}",
            )


def load_config(path: str | Path | None, overrides: list[str]) -> FinetuneConfig:
    return load(FinetuneConfig, path, overrides)


def task_objective(
    cfg: FinetuneConfig, model: nn.Module, delta: DeltaMethod | None, tokenizer, own: Objective
) -> Objective:
    """The task's own objective, or train.objective (and train.teacher) on text tasks."""
    chosen = cfg.train.objective != "causal-lm" or cfg.train.teacher
    if not chosen:
        return own
    if own is not default_objective:
        raise ConfigError(
            f"the {cfg.task} task has an objective of its own",
            fix="leave {objective=causal-lm} and {teacher} unset, or use {task=causal-lm}",
        )
    if cfg.train.objective == "multi-token" and delta is not None:
        raise ConfigError(
            "multi-token heads are new weights that a delta method does not save",
            fix="train all weights with {method=full}",
        )
    return build_objective(cfg.train, model, tokenizer)


# ── the run ─────────────────────────────────────────────────────────────────────────────────


def _prepare(
    cfg: FinetuneConfig, run_dir: Path, progress: bool
) -> tuple[nn.Module, DeltaMethod | None, TaskData, Objective, dict[str, Any]]:
    """The model (with its delta), the task's data, the objective trained and the results
    so far."""
    tokenizer = load_tokenizer(cfg.model)
    model, delta = training_mode(cfg.method).prepare(cfg)
    trainable, total = count_parameters(model)
    if progress:
        print(
            f"{cfg.method}: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.3f}%)"
        )
    results: dict[str, Any] = {"method": cfg.method, "trainable": trainable, "total": total}
    data = FINETUNE_TASKS.get(cfg.task).prepare(cfg, tokenizer, run_dir)
    results.update(data.facts)
    objective = task_objective(cfg, model, delta, tokenizer, data.objective)
    return model, delta, data, objective, results


def finetune(cfg: FinetuneConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (method "none": only evaluate) and write results.json; returns the results.
    Under torchrun each rank trains its rows of every batch (DDP); rank 0 prepares the model
    and data first, then alone scores the test set and writes the delta and results."""
    ctx = setup_distributed(cfg.train)  # one rank of several under torchrun, else alone
    progress = progress and ctx.is_main
    run_dir = Path(cfg.run_dir)
    check_resume(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with ctx.main_first():  # rank 0 converts an embedded model and builds shards first
        if ctx.is_main:
            save_config(cfg)
        model, delta, data, objective, results = _prepare(cfg, run_dir, progress)
    start = time.time()
    if training_mode(cfg.method).trains:
        result = train(
            model,
            data.train,
            cfg.train,
            run_dir,
            val_data=data.val,
            objective=objective,
            progress=progress,
        )
        results.update(val_loss=result.val_loss, tokens_per_s=result.tokens_per_s)
    else:
        results["val_loss"] = validation_loss(model, data.val, data.objective)[0]
    results["train_seconds"] = time.time() - start
    if not ctx.is_main:  # rank 0 scores the model and writes what the run leaves
        return results
    results.update(data.test(model))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if delta is not None:
        delta.save(run_dir / "delta")
    atomic_write_json(run_dir / "results.json", results)
    return results
