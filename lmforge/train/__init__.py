"""Training: the one loop, its config, objectives, optimizers, LR schedules and metrics.

`lmforge.train` is this package and the loop at once: `lmforge.train(model, data, config,
run_dir)` calls `train` whether or not a submodule (lmforge.train.optim, ...) was imported
first, which would otherwise put the package where the function was.
"""

import sys
import types
from typing import Any

from lmforge.train.config import PRECISIONS, TrainConfig
from lmforge.train.loop import seed_everything, train
from lmforge.train.objectives import OBJECTIVES, build_objective, objective_tokens  # noqa: I001
from lmforge.train.optim import OPTIMIZERS, AdamW8bit, PagedAdamW, build_optimizer, state_bytes
from lmforge.train.schedule import SCHEDULES, lr_at
from lmforge.train.state import BatchSource, Objective, TrainResult, TrainState
from lmforge.train.validation import default_objective, validation_loss

__all__ = [
    "OBJECTIVES",
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
    "build_objective",
    "build_optimizer",
    "default_objective",
    "lr_at",
    "objective_tokens",
    "seed_everything",
    "state_bytes",
    "train",
    "validation_loss",
]


class _TrainPackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
