"""Training: the one loop, its config, LR schedules and metrics."""

from lmforge.train.config import PRECISIONS, TrainConfig
from lmforge.train.evaluate import default_objective, evaluate
from lmforge.train.loop import build_optimizer, seed_everything, train
from lmforge.train.schedule import SCHEDULES, lr_at
from lmforge.train.state import BatchSource, Objective, TrainResult, TrainState

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
    "evaluate",
    "lr_at",
    "seed_everything",
    "train",
]
