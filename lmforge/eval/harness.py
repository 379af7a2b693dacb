"""The evaluation harness: score a model on a registered task and write the results.

evaluate(model, tokenizer, "bbc-news", EvalSettings(shots=4)) ─► TaskResult
    TASKS[name] ─► KINDS[task.kind].run ─► metrics, one record per example
write_results(results, out_dir, meta) ─► results.json   (metrics, settings, meta)
                                         results.md     (a markdown table)
                                         predictions.jsonl (one line per example)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.atomic import atomic_write_json, atomic_write_text
from lmforge.eval.base import KINDS, TASKS, EvalSettings, Task, TaskResult
from lmforge.eval.task_files import is_task_file, load_task_file
from lmforge.tokenizer import Tokenizer


def get_task(name: str) -> Task:
    """A registered task, or the task a task file defines (eval/task_files.py); an unknown
    name is a RegistryError listing the registered ones."""
    if is_task_file(name):
        return load_task_file(name)
    return TASKS.get(name)


def evaluate(
    model: nn.Module,
    tokenizer: Tokenizer,
    task: str | Task,
    settings: EvalSettings | None = None,
    *,
    embed: Callable | None = None,
    progress: bool = False,
) -> TaskResult:
    """Score `model` on `task`; `embed` (texts → unit vectors) serves nearest selection."""
    task = get_task(task) if isinstance(task, str) else task
    settings = settings or EvalSettings()
    settings.validate()
    run = KINDS.get(task.kind).run
    result = run(model, tokenizer, task, settings, embed=embed, progress=progress)
    result.kind = task.kind
    return result


def describe(settings: dict[str, Any], kind: str) -> str:
    """One phrase for a table row: '4-shot random, calibrated', '0-shot, cot, 5 samples'."""
    return KINDS.get(kind).describe(settings)


def results_table(results: Sequence[TaskResult]) -> str:
    """A markdown table: one row per (task, metric)."""
    lines = ["| task | setting | n | metric | value |", "|---|---|---|---|---|"]
    for r in results:
        for metric, value in r.metrics.items():
            setting = describe(r.settings, r.kind)
            lines.append(f"| {r.task} | {setting} | {r.n} | {metric} | {value:.4f} |")
    return "\n".join(lines)


def summary(result: TaskResult) -> dict[str, Any]:
    """A result without its per-example records (those go to predictions.jsonl)."""
    out = dataclasses.asdict(result)
    out.pop("predictions")
    return out


def write_results(
    results: TaskResult | Sequence[TaskResult], out_dir: str | Path, meta: dict[str, Any]
) -> Path:
    """Write results.json, results.md and predictions.jsonl atomically; returns results.json."""
    results = [results] if isinstance(results, TaskResult) else list(results)
    out = Path(out_dir)
    atomic_write_json(
        out / "results.json", {"meta": meta, "results": [summary(r) for r in results]}
    )
    title = f"# Evaluation of {meta.get('model', 'a model')}"
    if meta.get("adapter"):
        title += f" + {meta['adapter']}"
    atomic_write_text(out / "results.md", f"{title}\n\n{results_table(results)}\n")
    lines = [
        json.dumps({"task": r.task, **record}, ensure_ascii=False)
        for r in results
        for record in r.predictions
    ]
    atomic_write_text(out / "predictions.jsonl", "".join(line + "\n" for line in lines))
    return out / "results.json"
