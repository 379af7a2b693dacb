"""The one training loop: pretraining, fine-tuning, alignment and the lab all run through it.

    resume from train.resume_from (model, AdamW, RNG, data position) or seed afresh
    for step in start+1 .. max_steps:
        lr ← lr_at(step)                                   (schedule.py)
        grad_accum × [ batch ← data.next_batch()
                       loss ← objective(model, batch)       default: model(**batch).loss
                              + what the model's layers add (MoE balance and z losses)
                       (loss / grad_accum).backward() ]
        guard  loss and ‖g‖ finite, else TrainingDivergedError (nothing saved for this step)
        clip   ‖g‖ ≤ grad_clip; AdamW step (decay on matrices only)
        log → metrics.jsonl, tqdm │ eval → val loss, ppl │ save → checkpoint │ callbacks
    final log, eval and checkpoint; loss.png
    SIGTERM / SIGINT: checkpoint at the next step boundary, then RunInterrupted (signals.py)

Several processes (train.distributed, distributed.py): each rank wraps the model (DDP, FSDP),
draws its rows of every global batch and backpropagates its share of the global mean loss;
the ranks agree at each step boundary whether a signal or a callback stops the run, write
sharded checkpoints together (sharded.py), and only rank 0 writes metrics and plots.

What plugs in: an objective (loss of a batch; if it has them, its `validation` is what
validation reports and `at_step(step)` runs before each update), callbacks (on_step_end /
on_eval / on_save, each given a TrainState; setting `state.stop = True` ends the run after
this step), and any BatchSource. An objective's `step_metrics` (a dict of floats it leaves
after each training call: rewards, KL...) are averaged like the loss and logged beside it.
Only parameters with requires_grad are optimised and checkpointed, so a delta-tuning method
freezes the base and hands the same model to this loop.

Resume is exact: everything a step reads (weights, optimizer moments, lr step, torch/numpy/
python RNG, data position, the loss accumulator of the next log line) is in the checkpoint,
so on CPU an interrupted-and-resumed run reproduces the uninterrupted losses bit for bit.
Gradients of the last step stay in `.grad` until the next step begins, for callbacks to read.
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lmforge.errors import RunInterrupted, TrainingDivergedError
from lmforge.model.host import set_gradient_checkpointing
from lmforge.model.moe import Auxiliary, auxiliary
from lmforge.train.checkpoint import resume_from_checkpoint, save_checkpoint
from lmforge.train.config import TrainConfig, autocast
from lmforge.train.distributed import full_value, setup
from lmforge.train.metrics import MetricsLog, plot_experts, plot_losses
from lmforge.train.optim import build_optimizer, param_groups
from lmforge.train.schedule import lr_at
from lmforge.train.sharded import load_any, save_sharded
from lmforge.train.signals import GracefulStop
from lmforge.train.snapshot import restore_rng
from lmforge.train.state import Batch, BatchSource, Objective, TrainResult, TrainState
from lmforge.train.validation import default_objective, to_device, validation_loss


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Run:
    """The mutable state of one `train` call; each method is one phase of a step."""

    def __init__(self, model, data, config, run_dir, val_data, objective, callbacks) -> None:
        self.model, self.data, self.config, self.run_dir = model, data, config, run_dir
        self.val_data, self.callbacks = val_data, list(callbacks)
        self.objective = objective or default_objective
        self.val_objective = getattr(self.objective, "validation", self.objective)
        self.at_step = getattr(self.objective, "at_step", lambda step: None)
        self.dist = setup(config)
        self.device = self.dist.device
        model.to(self.device)
        model.train()
        if config.gradient_checkpointing:
            set_gradient_checkpointing(model)
        self.wrapped = self.dist.wrap(model, config.precision)  # model, DDP(model) or sharded
        self.forward_model = torch.compile(self.wrapped) if config.compile else self.wrapped
        self.data = self.dist.shard(data)
        self.optimizer = build_optimizer(
            config.optimizer,
            param_groups(model, config.weight_decay),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            **config.optimizer_options,
        )
        self.metrics = MetricsLog(run_dir / "metrics.jsonl" if self.dist.is_main else None)
        self.aux = Auxiliary()  # the layers' auxiliary losses and expert loads (MoE)
        self.history: list[dict[str, Any]] = []
        self.state = TrainState(
            step=0,
            max_steps=config.max_steps,
            run_dir=run_dir,
            model=model,
            optimizer=self.optimizer,
        )
        # Loss and step_metrics since the last log line; saved so a resumed log line is the same.
        self.loss_sum, self.loss_count = 0.0, 0
        self.metric_sums: dict[str, float] = {}
        self.last_eval, self.last_save = -1, -1
        self.elapsed_before = 0.0

    # ------------------------------------------------------------ start

    def start(self) -> None:
        found = self.resume()
        if found is None:
            seed_everything(self.config.seed)
            self.metrics.truncate_after(0)
            return
        ckpt, loaded = found
        extra = loaded["extra"]
        self.data.load_state_dict(extra["data"])
        loop = extra["loop"]
        s = self.state
        s.step, s.tokens_seen, s.lr, s.checkpoint = loaded["step"], loop["tokens"], loop["lr"], ckpt
        s.val_loss, s.val_ppl = loop["val_loss"], loop["val_ppl"]
        self.loss_sum, self.loss_count = loop["loss_sum"], loop["loss_count"]
        self.aux.load_state_dict(loop.get("aux", {}))
        self.metric_sums = dict(loop.get("metric_sums", {}))
        self.last_eval, self.last_save = loop["last_eval"], s.step
        self.elapsed_before = loop["elapsed"]
        self.history = self.metrics.truncate_after(s.step)
        restore_rng(loaded["rng"])  # last: nothing above may draw from the restored streams

    def resume(self) -> tuple[Path, dict[str, Any]] | None:
        sharded = self.dist.strategy.sharded
        return resume_from_checkpoint(
            self.run_dir,
            self.config.resume_from,
            lambda ckpt: load_any(ckpt, self.model, self.optimizer, sharded_run=sharded),
        )

    # ------------------------------------------------------------ one update

    def diverged(self, step: int, what: str, value: float, lr: float) -> TrainingDivergedError:
        good = self.state.checkpoint or "none (no checkpoint was written yet)"
        return TrainingDivergedError(
            f"step {step}: the {what} is {value} (not finite); nothing was saved for this step. "
            f"Last good checkpoint: {good}. Try a lower lr (this step used {lr:.3g}, "
            f"train.lr={self.config.lr:g}), more warmup_steps or a grad_clip, and check the "
            "data for empty or fully masked (-100) label rows."
        )

    def step(self) -> None:
        began = time.perf_counter()
        cfg, s = self.config, self.state
        step = s.step + 1
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.at_step(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for i in range(cfg.grad_accum):
            batch = self.data.next_batch()
            with self.dist.strategy.accumulate(self.wrapped, i == cfg.grad_accum - 1):
                with autocast(cfg.precision, self.device), auxiliary(self.model, self.aux):
                    loss = self.objective(self.forward_model, to_device(batch, self.device))
                loss, value, tokens = self.dist.share_loss(loss, batch)
                extra = self.aux.pop_loss()  # None for a model whose layers add no loss
                if extra is not None:  # each rank's own: averaged with the gradients
                    loss = loss + extra
                    value_extra = float(extra.detach())
                    if not math.isfinite(value_extra):
                        raise self.diverged(step, "auxiliary loss", value_extra, lr)
                if not math.isfinite(value):
                    raise self.diverged(step, "loss", value, lr)
                (loss / cfg.grad_accum).backward()
            s.tokens_seen += tokens
            loss_value += value / cfg.grad_accum
            for name, measured in getattr(self.objective, "step_metrics", {}).items():
                self.metric_sums[name] = self.metric_sums.get(name, 0.0) + measured / cfg.grad_accum
        grad_norm = self.clip()
        if not math.isfinite(grad_norm):
            raise self.diverged(step, "gradient norm", grad_norm, lr)
        self.optimizer.step()
        s.step, s.loss, s.lr, s.grad_norm = step, loss_value, lr, grad_norm
        s.elapsed = self.elapsed()
        self.step_time += time.perf_counter() - began
        self.loss_sum += loss_value
        self.loss_count += 1

    def clip(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        if self.config.grad_clip > 0:
            return full_value(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        return full_value(torch.nn.utils.get_total_norm([p.grad for p in params]))

    # ------------------------------------------------------------ log, eval, save

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def record(self, **fields: Any) -> dict[str, Any]:
        s = self.state
        s.elapsed = self.elapsed()
        rec = {"step": s.step, **fields, "lr": s.lr, "tokens": s.tokens_seen, "elapsed": s.elapsed}
        self.metrics.append(rec)
        self.history.append(rec)
        return rec

    def log(self, bar: tqdm) -> None:
        if self.loss_count == 0:
            return
        s = self.state
        # Throughput of the steps alone: evaluation, checkpoints and plots are not counted.
        rate = (s.tokens_seen - self.mark_tokens) / max(self.step_time - self.mark_time, 1e-9)
        self.mark_tokens, self.mark_time = s.tokens_seen, self.step_time
        loss = self.loss_sum / self.loss_count
        measured = {k: v / self.loss_count for k, v in self.metric_sums.items()}
        self.loss_sum, self.loss_count, self.metric_sums = 0.0, 0, {}
        self.record(loss=loss, **measured, tokens_per_s=rate, **self.aux.metrics())
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{s.lr:.2e}", tok_s=f"{rate:.0f}")

    def eval(self) -> None:
        s = self.state
        s.val_loss, s.val_ppl = validation_loss(
            self.forward_model,
            self.val_data,
            self.val_objective,
            max_batches=self.config.eval_batches,
            device=self.device,
            precision=self.config.precision,
        )
        self.dist.strategy.settle(self.wrapped)
        self.last_eval = s.step
        self.record(val_loss=s.val_loss, val_ppl=s.val_ppl)
        self.notify("on_eval")

    def save(self) -> None:
        s = self.state
        loop = {
            "tokens": s.tokens_seen,
            "lr": s.lr,
            "elapsed": s.elapsed,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "metric_sums": self.metric_sums,
            "val_loss": s.val_loss,
            "val_ppl": s.val_ppl,
            "last_eval": self.last_eval,
            "aux": self.aux.state_dict(),
        }
        extra = {"data": self.data.state_dict(), "loop": loop}
        args = (self.run_dir, s.step, self.model, self.optimizer, extra)
        if self.dist.strategy.sharded:
            s.checkpoint = save_sharded(*args, self.dist, keep_last=self.config.keep_last)
        else:
            s.checkpoint = save_checkpoint(*args, keep_last=self.config.keep_last)
        self.last_save = s.step
        self.plot()
        self.notify("on_save")

    def after_step(self, bar: tqdm) -> None:
        cfg, step = self.config, self.state.step
        bar.update(1)
        if step % cfg.log_every == 0:
            self.log(bar)
        if self.val_data is not None and cfg.eval_every and step % cfg.eval_every == 0:
            self.eval()
        if cfg.save_every and step % cfg.save_every == 0:
            self.save()
        self.notify("on_step_end")

    def interrupted(self, signal_number: int) -> None:
        """Save the step just finished (nothing is lost) and stop with a message."""
        if self.last_save != self.state.step:
            self.save()
        self.plot()
        raise RunInterrupted(
            f"stopped by {signal.Signals(signal_number).name} after step {self.state.step}; "
            f"checkpoint {self.state.checkpoint} holds it. Run the same command again to resume.",
            signal_number,
        )

    def plot(self) -> None:
        if self.dist.is_main:
            plot_losses(self.history, self.run_dir / "loss.png", title=self.run_dir.name)
            if any("expert_share" in r for r in self.history):
                plot_experts(self.history, self.run_dir / "experts.png", title=self.run_dir.name)

    def notify(self, event: str) -> None:
        for callback in self.callbacks:
            hook = getattr(callback, event, None)
            if hook is not None:
                hook(self.state)

    # ------------------------------------------------------------ the run

    def run(self, progress: bool) -> TrainResult:
        cfg, s = self.config, self.state
        self.t0 = time.perf_counter()
        self.step_time = self.mark_time = 0.0  # seconds spent inside step() in this call
        self.start()
        start_tokens = self.mark_tokens = s.tokens_seen
        bar = tqdm(
            total=cfg.max_steps,
            initial=s.step,
            disable=not progress or not self.dist.is_main,
            unit="step",
            desc=self.run_dir.name,
            dynamic_ncols=True,
        )
        try:
            with GracefulStop() as signals:
                while True:  # every rank takes the same decision at each step boundary
                    received, s.stop = self.dist.agree(signals.received or 0, s.stop)
                    if received or s.stop or s.step >= cfg.max_steps:
                        break
                    self.step()
                    self.after_step(bar)
                if received:
                    self.interrupted(received)
            self.log(bar)
            if self.val_data is not None and self.last_eval != s.step:
                self.eval()
            if self.last_save != s.step:
                self.save()
            self.plot()
        finally:
            bar.close()
            self.metrics.close()
            if hasattr(self.optimizer, "close"):  # a paged optimizer removes its page file
                self.optimizer.close()
        seconds = time.perf_counter() - self.t0
        return TrainResult(
            step=s.step,
            train_loss=next((r["loss"] for r in reversed(self.history) if "loss" in r), None),
            val_loss=s.val_loss,
            val_ppl=s.val_ppl,
            tokens=s.tokens_seen,
            seconds=seconds,
            tokens_per_s=(s.tokens_seen - start_tokens) / max(self.step_time, 1e-9),
            history=self.history,
            run_dir=self.run_dir,
        )


def train(
    model: nn.Module,
    data: BatchSource,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    val_data: Iterable[Batch] | None = None,
    objective: Objective | None = None,
    callbacks: Sequence[object] = (),
    progress: bool = True,
) -> TrainResult:
    """Train `model` on `data` for `config.max_steps` updates, writing into `run_dir`.

    config.resume_from: `latest` continues from the newest readable checkpoint in run_dir
    when there is one, `step-N` from that one, `none` starts afresh (refused where
    checkpoints exist: earlier checkpoints are never deleted). SIGTERM or SIGINT save a
    checkpoint at the next step boundary and raise RunInterrupted.
    """
    config.validate()
    if not isinstance(data, BatchSource):
        raise TypeError("data must have next_batch(), state_dict() and load_state_dict()")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(model, data, config, run_dir, val_data, objective, callbacks)
    return run.run(progress=progress)
