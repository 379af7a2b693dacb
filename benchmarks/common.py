"""What the benchmark scripts share: ABBA timing, pair ratios and BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

import lmforge
from lmforge.atomic import atomic_write_text

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def measure(steps: dict[str, Callable[[], object]], n: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of n calls per contender, alternating ABBA so drift hits all alike."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def pair_ratio(reference: list[float], ours: list[float]) -> float:
    """Median of reference/ours over adjacent pairs: load from elsewhere slows both steps of a
    pair, so it cancels out of their ratio."""
    return statistics.median(r / t for r, t in zip(reference, ours))


def update_section(section: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace only `section` (a `## ` heading, up to the next one) of BENCHMARKS.md, or append."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    text = f"{section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1).rstrip() + "\n"
    else:
        new = old.rstrip() + "\n\n" + text
    atomic_write_text(path, new)


def anchor() -> str:
    """What a figure was measured on: lmforge's version and commit, torch, the machine."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(root), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() or "unknown"
    return (
        f"lmforge {lmforge.__version__} at commit {commit}, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )


def publish(section: str, body: str, script: str, write: bool = True) -> None:
    """Print a benchmark's section and (unless `write` is False) put it into BENCHMARKS.md
    with the command that reproduces it (`script`: the file, e.g. benchmarks/decode.py)."""
    print(body)
    if write:
        update_section(section, body + f"\n\nRun: `python {script}`")
        print(f"\nwrote the '{section}' section of {BENCHMARKS_MD}")


def child_result(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one side of a benchmark in its own process (so its peak RSS is its own), with
    `env` added to the environment, and read the JSON line it prints last."""
    environ = {**os.environ, **(env or {})}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=environ).stdout
    return json.loads(out.strip().splitlines()[-1])


def training_steps(
    loss_fn: Callable[[], object], params: list, warmup: int, steps: int, lr: float = 1e-4
) -> dict:
    """`warmup + steps` AdamW steps (loss, backward, update) in this process: the seconds of
    each measured step, the first loss, peak RSS (MB) and the trainable parameter count."""
    import resource

    import torch

    opt = torch.optim.AdamW(params, lr=lr)
    times, losses = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {
        "times": times,
        "first_loss": losses[0],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": sum(p.numel() for p in params),
    }


def alternating(sides: tuple[str, str], rounds: int, run: Callable[[str], dict]) -> dict:
    """`rounds` child runs per side, in the order A B, B A, A B, ...: side → list of results."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:
            runs[side].append(run(side))
    return runs


def step_table(runs: dict, tolerance: float, tokens: int = 0) -> tuple[str, dict[str, float]]:
    """The table of two sides' child runs (`alternating`'s result, ours first, each run with
    first_loss, times and rss_mb): median s/step, tokens/s when `tokens` per step is given,
    speed and peak RSS against the second side. Refuses sides whose first losses differ by
    more than `tolerance` (they would not be doing the same work). Returns (table, first
    losses)."""
    ours, ref = runs
    first = {s: r[0]["first_loss"] for s, r in runs.items()}
    if abs(first[ours] - first[ref]) > tolerance:
        raise SystemExit(f"the two sides disagree: first losses {first}")
    times = {s: [t for r in rs for t in r["times"]] for s, rs in runs.items()}
    rss = {s: min(r["rss_mb"] for r in rs) for s, rs in runs.items()}
    rate = " tokens/s |" if tokens else ""
    lines = [
        f"| side | s/step (median) |{rate} speed vs {ref} | peak RSS | RSS vs {ref} |",
        "|---|---:|" + ("---:|" if tokens else "") + "---:|---:|---:|",
    ]
    for side in (ours, ref):
        sec = statistics.median(times[side])
        rate = f" {tokens / sec:,.0f} |" if tokens else ""
        lines.append(
            f"| {side} | {sec:.2f} |{rate} {pair_ratio(times[ref], times[side]):.2f}x | "
            f"{rss[side]:,.0f} MB | {rss[side] / rss[ref]:.2f}x |"
        )
    return "\n".join(lines), first


def child_bench_parser(doc: str, sides: list[str], steps: int, warmup: int):
    """The flags every child-process step benchmark takes; the script adds its own."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--steps", type=int, default=steps, help="measured steps per child")
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--rounds", type=int, default=2, help="child processes per side")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--child", choices=sorted(sides), help=argparse.SUPPRESS)
    return p
