"""Learning-rate schedules: linear warmup, then a decay to min_lr_ratio·lr at max_steps.

`step` counts optimizer updates, 1-based: the loop asks `lr_at(s, cfg)` for the lr of update s.
With W = warmup_steps, M = max_steps, r = min_lr_ratio and p = (step − W) / (M − W):

    warmup   (step ≤ W):  lr · step / W                      0 at step 0, lr at step W
    cosine   (step > W):  lr · (r + (1 − r) · ½ (1 + cos πp))  (Loshchilov & Hutter 2017, SGDR)
    linear   (step > W):  lr · (r + (1 − r) · (1 − p))
    constant (step > W):  lr

        lr ┤     ╱‾╲_
           │    ╱    ╲_              cosine
           │   ╱       ╲_
      r·lr ┤  ╱          ‾‾───────   (held past M)
         0 ┼─╱───┬────────────┬────► step
           0     W            M

Past max_steps every schedule stays at its end value. KD_SCHEDULES holds the weight
schedules of a teacher's term (knowledge inheritance): constant, or linear-decay to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from lmforge.registry import Registry


class ScheduleConfig(Protocol):
    """The fields a schedule reads (TrainConfig has them)."""

    lr: float
    warmup_steps: int
    max_steps: int
    min_lr_ratio: float
    schedule: str


Schedule = Callable[[int, ScheduleConfig], float]
SCHEDULES: Registry[Schedule] = Registry("lr schedule")


def _progress(step: int, cfg: ScheduleConfig) -> float:
    """Fraction of the decay phase done: 0 at the end of warmup, 1 at max_steps."""
    span = cfg.max_steps - cfg.warmup_steps
    if span <= 0:
        return 1.0
    return min(1.0, (step - cfg.warmup_steps) / span)


@SCHEDULES.register("cosine")
def cosine(step: int, cfg: ScheduleConfig) -> float:
    r = cfg.min_lr_ratio
    return cfg.lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, cfg))))


@SCHEDULES.register("linear")
def linear(step: int, cfg: ScheduleConfig) -> float:
    r = cfg.min_lr_ratio
    return cfg.lr * (r + (1.0 - r) * (1.0 - _progress(step, cfg)))


@SCHEDULES.register("constant")
def constant(step: int, cfg: ScheduleConfig) -> float:
    return cfg.lr


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Learning rate of optimizer update `step` (1-based) under `cfg.schedule`."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * max(step, 0) / cfg.warmup_steps
    return SCHEDULES.get(cfg.schedule)(step, cfg)


# The teacher's weight in knowledge inheritance (objectives/distill.py), as a fraction of
# train.kd_weight at update `step` of a decay lasting `horizon` updates.
KDSchedule = Callable[[int, int], float]
KD_SCHEDULES: Registry[KDSchedule] = Registry("kd schedule")
KD_SCHEDULES.add("constant", lambda step, horizon: 1.0)
KD_SCHEDULES.add("linear-decay", lambda step, horizon: max(0.0, 1.0 - step / max(horizon, 1)))
