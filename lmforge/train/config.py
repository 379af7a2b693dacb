"""TrainConfig: every knob of the training loop, checked before a run starts.

Device and precision are resolved here too, through registries rather than branches:

    device     "auto" → cuda if available, else cpu; or any torch device string ("cuda:1")
    precision  "auto" → bf16 autocast on CUDA, fp32 elsewhere (bf16 matmul is ~100× slower
               on CPUs without bf16 units); "fp32"; "bf16" (autocast wherever asked)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from lmforge.errors import ConfigError
from lmforge.registry import Registry
from lmforge.train.optim import OPTIMIZERS
from lmforge.train.schedule import KD_SCHEDULES, SCHEDULES

RESUMABLE = re.compile(r"^step-\d+$")

# precision name → the autocast dtype on a device (None = plain fp32).
PRECISIONS: Registry[Callable[[torch.device], torch.dtype | None]] = Registry("precision")
PRECISIONS.add("auto", lambda device: torch.bfloat16 if device.type == "cuda" else None)
PRECISIONS.add("fp32", lambda device: None)
PRECISIONS.add("bf16", lambda device: torch.bfloat16)


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer updates in the whole run
    batch_size: int = 8  # sequences per micro-batch (the data loader is built with it)
    grad_accum: int = 1  # micro-batches per update; loss is scaled by 1/grad_accum
    lr: float = 3e-4  # peak learning rate (after warmup)
    min_lr_ratio: float = 0.1  # final lr as a fraction of lr (cosine and linear decay)
    warmup_steps: int = 100  # linear warmup from 0 to lr over this many updates
    schedule: str = "cosine"  # lr schedule after warmup: cosine | linear | constant
    optimizer: str = "adamw"  # adamw | adamw8bit (8-bit moments) | paged_adamw (moments paged)
    optimizer_options: dict = field(default_factory=dict)  # extra options, e.g. {page_dir: /d}
    weight_decay: float = 0.1  # AdamW decoupled decay, on tensors with dim >= 2 only
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    eval_every: int = 100  # validate every this many updates (0 = only at the end)
    eval_batches: int = 20  # validation batches per evaluation (0 = all of them)
    save_every: int = 500  # checkpoint every this many updates (0 = only at the end)
    keep_last: int = 2  # checkpoints kept on disk, newest first (0 = keep all)
    log_every: int = 10  # write a metrics line every this many updates
    seed: int = 1337  # seeds torch, numpy and python `random` at the start of a fresh run
    device: str = "auto"  # auto | cpu | cuda | cuda:N | ...
    precision: str = "auto"  # auto | fp32 | bf16 (autocast)
    compile: bool = False  # run the model through torch.compile
    distributed: str = "auto"  # none | ddp | fsdp (several processes) | auto: ddp under torchrun
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory
    resume_from: str = "latest"  # latest (newest readable checkpoint) | step-N | none (fresh)
    objective: str = "causal-lm"  # causal-lm | span-corruption | prefix-lm | ul2 | multi-token
    objective_options: dict = field(default_factory=dict)  # its settings, e.g. {n_future: 4}
    teacher: str = ""  # knowledge inheritance: model name or directory to learn from ("" = none)
    teacher_backend: str = "native"  # how the teacher loads: native | hf (transformers)
    kd_weight: float = 0.5  # α, the teacher's share: (1 − α)·CE + α·τ²·KL(teacher ‖ student)
    kd_schedule: str = "linear-decay"  # constant | linear-decay (α falls to 0 by kd_decay_steps)
    kd_decay_steps: int = 0  # updates over which linear-decay reaches 0 (0 = max_steps)
    kd_temperature: float = 1.0  # τ: both distributions softened by it
    kd_top_k: int = 0  # keep the teacher's k most likely tokens (0 = its full distribution)
    kd_cache: str = ""  # directory caching the teacher's top-k logits per batch ("" = none)

    def validate(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every")
        non_negative = (
            "warmup_steps",
            "weight_decay",
            "grad_clip",
            "eval_every",
            "eval_batches",
            "save_every",
            "keep_last",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps > self.max_steps:
            raise ConfigError(
                f"train.warmup_steps ({self.warmup_steps}) exceeds train.max_steps "
                f"({self.max_steps}); lower warmup_steps"
            )
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ConfigError(f"train.eps must be positive, got {self.eps}")
        self.validate_inheritance()
        checked = (("schedule", SCHEDULES), ("precision", PRECISIONS), ("optimizer", OPTIMIZERS))
        for name, registry in checked:
            if getattr(self, name) not in registry:
                raise ConfigError(
                    f"train.{name} {getattr(self, name)!r} is unknown; choose from "
                    f"{registry.names()}"
                )
        if self.resume_from not in ("latest", "none") and not RESUMABLE.match(self.resume_from):
            raise ConfigError(
                f"train.resume_from {self.resume_from!r}: use latest, none or step-N "
                "(a checkpoint name such as step-00000200)"
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ConfigError(
                    f"train.device {self.device!r} is not a device; use auto, cpu, cuda or cuda:N"
                ) from None

    def validate_inheritance(self) -> None:
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ConfigError(f"train.kd_weight must be in [0, 1], got {self.kd_weight}")
        if not self.kd_temperature > 0:
            raise ConfigError(f"train.kd_temperature must be positive, got {self.kd_temperature}")
        if self.kd_top_k < 0 or self.kd_decay_steps < 0:
            raise ConfigError("train.kd_top_k and train.kd_decay_steps must be >= 0")
        if self.kd_schedule not in KD_SCHEDULES:
            raise ConfigError(
                f"train.kd_schedule {self.kd_schedule!r} is unknown; choose from "
                f"{KD_SCHEDULES.names()}"
            )
        if self.kd_cache and not self.kd_top_k:
            raise ConfigError(
                "train.kd_cache stores the teacher's top-k logits, and train.kd_top_k is 0 "
                "(the full distribution: V numbers per token)",
                fix="set {kd_top_k=32}, or drop {kd_cache}",
            )


def resolve_device(name: str) -> torch.device:
    """ "auto" → cuda when available, else cpu; a CUDA device that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device {name!r} is not a device name torch knows",
            fix="use {device=cpu}, {device=cuda}, {device=cuda:0} or {device=auto}",
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} needs CUDA, which is not available here",
            fix="use {device=auto} or {device=cpu}",
        )
    return device


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context for a precision name on a device (a no-op for fp32)."""
    dtype = PRECISIONS.get(precision)(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
