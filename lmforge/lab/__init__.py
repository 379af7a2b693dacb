"""Built-in experiments; importing this package registers all of them."""

from lmforge.lab import instruct, knowledge, peft_compare, prompting, qlora, tools, warmup  # noqa: F401
from lmforge.lab.base import (
    LABS,
    Experiment,
    LabConfig,
    experiment,
    lab_listing,
    run_experiment,
    run_lab,
)

__all__ = [
    "LABS",
    "Experiment",
    "LabConfig",
    "experiment",
    "lab_listing",
    "run_experiment",
    "run_lab",
]
