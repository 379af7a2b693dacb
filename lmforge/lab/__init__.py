"""Built-in experiments; importing this package registers all of them."""

from lmforge.lab import (  # noqa: F401
    alignment,
    instruct,
    knowledge,
    moe,
    moefication,
    peft_compare,
    prompting,
    qlora,
    retnet,
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
