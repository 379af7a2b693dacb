"""Line plots as PNG files: training curves, lab results.

Drawn with matplotlib's object API on an Agg canvas, so no display is needed and the global
pyplot backend of the calling process (a notebook, say) is left alone. The file is written
atomically: a reader sees the previous plot or the new one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from lmforge.atomic import atomic_write


def _figure(rows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5 if rows == 1 else 3 * rows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return path


def plot_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
) -> Path:
    """Draw one line per `name → (xs, ys)` and write the PNG to `path`; empty series are skipped."""
    fig, (ax,) = _figure()
    _draw(ax, series, xlabel, ylabel, logy)
    ax.set_title(title)
    return _save(fig, path)


def _draw(ax, series: dict, xlabel: str, ylabel: str, logy: bool = False) -> None:
    for name, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r} has {len(xs)} x values but {len(ys)} y values")
        if len(xs) == 0:
            continue
        # A lone point draws no line; give it a marker so it shows.
        ax.plot(list(xs), list(ys), label=name, marker="o" if len(xs) == 1 else None)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", ncol=1 + len(series) // 6)


def plot_panels(
    panels: Sequence[tuple[dict[str, tuple[Sequence[float], Sequence[float]]], str]],
    path: str | Path,
    title: str = "",
    xlabel: str = "step",
) -> Path:
    """`plot_curves` panels stacked over one x axis: one (series, ylabel) pair per panel."""
    fig, axes = _figure(len(panels))
    for ax, (series, ylabel) in zip(axes, panels):
        _draw(ax, series, xlabel, ylabel)
    axes[0].set_title(title)
    return _save(fig, path)


def plot_bars(
    values: dict[str, float],
    path: str | Path,
    title: str = "",
    ylabel: str = "",
    reference: float | None = None,
    reference_label: str = "",
) -> Path:
    """One horizontal bar per `name → value`, optionally a dashed reference line."""
    fig, (ax,) = _figure()
    names = list(values)
    ax.barh(names[::-1], [values[n] for n in names[::-1]], color="tab:blue")
    if reference is not None:
        ax.axvline(reference, color="tab:red", linestyle="--", label=reference_label)
        ax.legend(loc="lower right")
    ax.set_title(title)
    ax.set_xlabel(ylabel)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def plot_scaling(
    points: dict[str, tuple[float, float]],
    curve: tuple[Sequence[float], Sequence[float]],
    path: str | Path,
    prediction: tuple[float, float, float, float] | None = None,
    measured: tuple[float, float] | None = None,
    title: str = "",
    xlabel: str = "training compute (FLOPs)",
    ylabel: str = "validation loss",
) -> Path:
    """A scaling law on log–log axes: the fitted points (`name → (x, y)`), the fitted curve,
    a predicted point `(x, y, low, high)` with its interval, and the measured point there."""
    fig, (ax,) = _figure()
    ax.plot(list(curve[0]), list(curve[1]), color="tab:gray", label="fit")
    ax.scatter([x for x, _ in points.values()], [y for _, y in points.values()], label="ladder")
    for name, (x, y) in points.items():
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if prediction is not None:
        x, y, low, high = prediction
        ax.errorbar(
            [x],
            [y],
            yerr=[[y - low], [high - y]],
            fmt="s",
            color="tab:orange",
            capsize=4,
            label="prediction (95% interval)",
        )
    if measured is not None:
        ax.scatter(
            [measured[0]], [measured[1]], marker="*", s=140, color="tab:red", label="measured"
        )
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())  # losses as 4.0, not 4×10⁰
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)
