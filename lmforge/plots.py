"""Line plots as PNG files: training curves, lab results.

Drawn with matplotlib's object API on an Agg canvas, so no display is needed and the global
pyplot backend of the calling process (a notebook, say) is left alone. The file is written
atomically: a reader sees the previous plot or the new one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from lmforge.io import atomic_write


def plot_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
) -> Path:
    """Draw one line per `name → (xs, ys)` and write the PNG to `path`; empty series are skipped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(xs)} x values but {len(ys)} y values")
        if len(xs) == 0:
            continue
        # A lone point draws no line; give it a marker so it shows.
        ax.plot(list(xs), list(ys), label=name, marker="o" if len(xs) == 1 else None)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return path
