"""run_dir/metrics.jsonl and run_dir/loss.png: what a run reports while it runs.

One JSON object per event, appended and flushed as it happens:

    {"step": 10, "loss": 3.91, "lr": 0.0003, "tokens": 5120, "tokens_per_s": 812.5, "elapsed": 6.3}
    {"step": 50, "val_loss": 3.72, "val_ppl": 41.3, "lr": 0.00028, "tokens": 25600, "elapsed": 31.0}

A resumed run first cuts the file back to its checkpoint's step, so every step appears once
and in order. A line torn by a crash (no newline, bad JSON) is dropped when the file is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from lmforge.atomic import atomic_write_text
from lmforge.plots import plot_curves


class MetricsLog:
    """Append-only JSONL event log of one run; with path None (a process other than rank 0 of
    several) it writes and reads nothing."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._file: TextIO | None = None

    def read(self) -> list[dict[str, Any]]:
        """Every complete record in the file (a torn or undecodable line is skipped)."""
        if self.path is None or not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
        return records

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep only records up to and including `step`; return them."""
        self.close()
        if self.path is None:
            return []
        kept = [r for r in self.read() if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_text(self.path, text)
        return kept

    def append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def plot_losses(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train and validation loss against step, from metrics records."""
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    series = {
        "train": ([s for s, _ in train], [v for _, v in train]),
        "val": ([s for s, _ in val], [v for _, v in val]),
    }
    return plot_curves(series, path, title=title, xlabel="step", ylabel="loss")
