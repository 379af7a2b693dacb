"""Built-in experiments; importing this package registers all of them."""

from lmforge.lab import (  # noqa: F401
    alignment,
    inheritance,
    instruct,
    knowledge,
    moe,
    moefication,
    objectives,
    peft_compare,
    prompting,
    qlora,
    retnet,
    scaling,
    stacking,
    tools,
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
