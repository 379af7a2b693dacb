"""Built-in experiments; importing this package registers all of them."""

from lmforge.lab import instruct, peft_compare, prompting, qlora, tools, warmup  # noqa: F401
from lmforge.lab.base import LABS, Experiment, experiment, run_experiment
from lmforge.lab.report import Report

__all__ = ["LABS", "Experiment", "Report", "experiment", "run_experiment"]
