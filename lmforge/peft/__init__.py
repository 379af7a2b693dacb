"""Parameter-efficient delta tuning: one contract (base.py), one injector (inject.py),
one file per method. Importing this package registers every method."""

from lmforge.peft import (  # noqa: F401  (importing registers the methods)
    adapter,
    bitfit,
    lora,
    prefix,
    prompt_tuning,
    ptuning,
    ptuning_v2,
    qlora,
)
from lmforge.peft.base import METHODS, DeltaMethod, apply, build, load_delta, register
from lmforge.peft.inject import count_parameters, default_targets, freeze, match_targets
from lmforge.peft.loading import load_adapter

__all__ = [
    "METHODS",
    "DeltaMethod",
    "apply",
    "build",
    "count_parameters",
    "default_targets",
    "freeze",
    "load_adapter",
    "load_delta",
    "match_targets",
    "register",
]
