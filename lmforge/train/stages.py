"""Training in stages with model growth between them, on the one loop and its checkpoints.

    stage 0: shape₀, updates 1..at₀ ─► checkpoint at₀ ─► grow ─► checkpoint at₀ (shape₁)
    stage 1: shape₁, updates at₀+1..at₁ ─► …        last stage: up to train.max_steps

Every stage is one `train` call with the run's own config (so the lr schedule runs over the
whole run) that stops at the stage's end. Growing rewrites the checkpoint of that update with
the grown model, the same data position, loop counters and random streams, and its optimizer
state: fresh (grow.optimizer=reset) or, for copied parameters, the source's moments (carry).
The grown model is an ordinary checkpoint, so a run resumes anywhere: the stage is read off
the checkpoint's parameter shapes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from lmforge.errors import CheckpointError
from lmforge.model import CausalLM, ModelConfig
from lmforge.train.checkpoint import (
    STATE_FILE,
    checkpoint_dir,
    load_checkpoint,
    resume_candidates,
    save_checkpoint,
)
from lmforge.train.config import TrainConfig
from lmforge.train.growth import GrowthConfig, grow
from lmforge.train.loop import train
from lmforge.train.optim import build_optimizer, param_groups
from lmforge.train.snapshot import restore_rng
from lmforge.train.state import Batch, BatchSource, Objective, TrainResult, TrainState


class StopAt:
    """A callback that ends the run after update `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: TrainState) -> None:
        state.stop = state.step >= self.step


def _shape_of(signature: dict[str, list[int]]) -> tuple[int, int]:
    layers = {name.split(".")[2] for name in signature if name.startswith("model.layers.")}
    return len(layers), signature["model.embed_tokens.weight"][1]


def checkpoint_stage(run_dir: Path, resume_from: str, shapes: list[ModelConfig]) -> tuple[int, int]:
    """(stage, step) of the checkpoint a run resumes from; (0, 0) for a fresh run."""
    candidates = resume_candidates(run_dir, resume_from)
    if not candidates:
        return 0, 0
    state = json.loads((candidates[0] / STATE_FILE).read_text(encoding="utf-8"))
    shape = _shape_of(state["signature"])
    for k, s in enumerate(shapes):
        if (s.n_layer, s.d_model) == shape:
            return k, int(state["step"])
    raise CheckpointError(
        f"{candidates[0]} holds a model of {shape[0]} layers × {shape[1]}, which no stage of "
        "grow has; resume with the growth settings the run was made with"
    )


def _optimizer(model: CausalLM, config: TrainConfig) -> torch.optim.Optimizer:
    return build_optimizer(
        config.optimizer,
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        **config.optimizer_options,
    )


def grow_checkpoint(
    run_dir: Path,
    ckpt: Path,
    shape: ModelConfig,
    old: ModelConfig,
    growth: GrowthConfig,
    config: TrainConfig,
) -> CausalLM:
    """Load the stage's last checkpoint, grow it to `shape` and save it in its place."""
    model = CausalLM(old)
    optimizer = _optimizer(model, config)
    loaded = load_checkpoint(ckpt, model, optimizer)
    grown, sources = grow(model, shape, growth, seed=config.seed + loaded["step"])
    fresh = _optimizer(grown, config)
    if growth.optimizer == "carry":
        params = dict(model.named_parameters())
        for name, p in grown.named_parameters():
            if name in sources and params[sources[name]] in optimizer.state:
                moments = optimizer.state[params[sources[name]]]
                fresh.state[p] = {k: v.clone() for k, v in moments.items()}
    restore_rng(loaded["rng"])  # the grown checkpoint keeps the random streams of the step
    save_checkpoint(
        run_dir, loaded["step"], grown, fresh, loaded["extra"], keep_last=config.keep_last
    )
    return grown


def train_in_stages(
    shapes: list[ModelConfig],
    growth: GrowthConfig,
    make_objective: Callable[[CausalLM], Objective | None],
    data: BatchSource,
    config: TrainConfig,
    run_dir: Path,
    *,
    val_data: Iterable[Batch] | None = None,
    progress: bool = True,
) -> tuple[TrainResult, CausalLM]:
    """Train through every stage of `shapes` (growing at grow.at); the last stage's result."""
    ends = [*growth.at, config.max_steps]
    stage, step = checkpoint_stage(run_dir, config.resume_from, shapes)
    torch.manual_seed(config.seed)
    model = CausalLM(shapes[stage])
    while True:
        last = stage == len(shapes) - 1
        result = None
        if last or step < ends[stage]:
            callbacks = [] if last else [StopAt(ends[stage])]
            result = train(
                model,
                data,
                config,
                run_dir,
                val_data=val_data,
                objective=make_objective(model),
                callbacks=callbacks,
                progress=progress,
            )
        if last:
            return result, model
        ckpt = checkpoint_dir(run_dir, ends[stage])
        model = grow_checkpoint(run_dir, ckpt, shapes[stage + 1], shapes[stage], growth, config)
        config = dataclasses.replace(config, resume_from="latest")
        stage, step = stage + 1, ends[stage]
