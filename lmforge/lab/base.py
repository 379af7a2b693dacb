"""The lab: one registered experiment per claim of the handbook that is checkable at small scale.

    lmforge lab list
    lmforge lab NAME [--quick] [--out DIR]          LabConfig → run_lab

An experiment is a function (out_dir, quick) -> Report; it writes report.md and its
plots into out_dir (default runs/lab/NAME). `--quick` is a smoke-sized version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import arg
from lmforge.registry import Registry
from lmforge.report import Report


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str  # the handbook's claim the experiment checks, in one sentence
    run: Callable[[Path, bool], Report]
    minutes: float  # rough full-run time on a 2-core CPU


LABS: Registry[Experiment] = Registry("lab experiment")


def experiment(name: str, claim: str, minutes: float) -> Callable:
    def register(fn: Callable[[Path, bool], Report]) -> Callable[[Path, bool], Report]:
        LABS.add(name, Experiment(name, claim, fn, minutes))
        return fn

    return register


def run_experiment(name: str, out_dir: str | Path | None = None, quick: bool = False) -> Path:
    exp = LABS.get(name)
    out = Path(out_dir) if out_dir else Path("runs/lab") / (name + ("-quick" if quick else ""))
    report = exp.run(out, quick)
    return report.write()


@dataclass
class LabConfig:
    name: str = arg(positional=True, choices=LABS.names)  # `list`, or the experiment to run
    quick: bool = False  # a smoke-sized run
    out: str | None = None  # run directory (default runs/lab/NAME)


def lab_listing() -> str:
    """One line per experiment: name, rough minutes, the claim it checks."""
    return "\n".join(
        f"{name:16} ~{LABS.get(name).minutes:g} min  {LABS.get(name).claim}" for name in LABS
    )


def run_lab(cfg: LabConfig) -> Path | None:
    """Print the listing (`list`), or run the experiment and return its report's path."""
    if cfg.name == "list":
        print(lab_listing())
        return None
    path = run_experiment(cfg.name, cfg.out, cfg.quick)
    print(f"report written to {path}")
    return path
