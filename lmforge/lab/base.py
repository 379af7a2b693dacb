"""The lab: one registered experiment per claim of the handbook that is checkable at small scale.

    lmforge lab list
    lmforge lab NAME [--quick] [--out DIR]

An experiment is a function (out_dir, quick) -> Report; it writes report.md and its
plots into out_dir (default runs/lab/NAME). `--quick` is a smoke-sized version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.lab.report import Report
from lmforge.registry import Registry


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
