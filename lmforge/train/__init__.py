"""Training: the one loop, its config, LR schedules and metrics."""

from lmforge.train.config import PRECISIONS, TrainConfig
from lmforge.train.loop import build_optimizer, seed_everything, train
from lmforge.train.schedule import SCHEDULES, lr_at
from lmforge.train.state import BatchSource, Objective, TrainResult, TrainState
from lmforge.train.validation import default_objective, validation_loss

__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "BatchSource",
    "Objective",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "default_objective",
    "lr_at",
    "seed_everything",
    "train",
    "validation_loss",
]
