"""Training: the one loop, its config, optimizers, LR schedules and metrics."""

from lmforge.train.config import PRECISIONS, TrainConfig
from lmforge.train.evaluate import default_objective, evaluate
from lmforge.train.loop import seed_everything, train
from lmforge.train.optim import OPTIMIZERS, AdamW8bit, PagedAdamW, build_optimizer, state_bytes
from lmforge.train.schedule import SCHEDULES, lr_at
from lmforge.train.state import BatchSource, Objective, TrainResult, TrainState

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "AdamW8bit",
    "BatchSource",
    "Objective",
    "PagedAdamW",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "default_objective",
    "evaluate",
    "lr_at",
    "seed_everything",
    "state_bytes",
    "train",
]
