"""Built-in experiments; importing this package registers all of them."""

from lmforge.lab import (  # noqa: F401
    inheritance,
    instruct,
    knowledge,
    objectives,
    peft_compare,
    prompting,
    qlora,
    scaling,
    stacking,
    warmup,
)
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
