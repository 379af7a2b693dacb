"""Built-in experiments; importing this package registers all of them."""

from lmforge.lab import (  # noqa: F401
    alignment,
    instruct,
    peft_compare,
    prompting,
    qlora,
    warmup,
)
from lmforge.lab.base import LABS, Experiment, experiment, run_experiment
from lmforge.lab.report import Report

__all__ = ["LABS", "Experiment", "Report", "experiment", "run_experiment"]
