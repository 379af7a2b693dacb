"""Training attention's memory and time against sequence length: SDPA's fused kernels against
the textbook softmax(QKᵀ/√d)·V that materialises the (T, T) scores.

Forward and backward of causal attention on q, k, v of shape (1, heads, T, 64) for T from 256
to 8,192, one contender per child process (so its peak is its own):

    peak memory  CPU: the child's peak resident memory above what it held before the first
                 call (ru_maxrss); CUDA: torch.cuda.max_memory_allocated above the inputs
    time         median of 3 forward + backward calls after one warmup

The claim (FlashAttention, Dao et al., 2022): computing attention block by block with an
online softmax never stores the (T, T) matrix, so memory grows linearly in T instead of
quadratically, at no loss of exactness. The native model uses SDPA (`model.attention=sdpa`)
by default; `naive` (attention.py) is the reference the tests compare it with.

Usage: python benchmarks/attention_memory.py [--heads 2] [--threads 2] [--device cpu]
It prints a table and rewrites the "## Attention memory" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from lmforge.model.attention import ATTENTION

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_result, update_section  # noqa: E402

SECTION = "## Attention memory"
LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
KERNELS = ["sdpa", "naive"]


def child(kernel: str, T: int, heads: int, device: str) -> dict:
    """One contender at one length: peak memory (MiB) and median seconds of forward + backward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, T, 64, device=device, requires_grad=True) for _ in range(3))
    fn = ATTENTION.get(kernel)

    def call() -> None:
        fn(q, k, v, None, 0.0, True).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    call()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"mib": max(peak, 0) / 2**20, "ms": 1000 * statistics.median(times)}


def run(heads: int, device: str, threads: int) -> dict[tuple[str, int], dict]:
    results = {}
    for T in LENGTHS:
        for kernel in KERNELS:
            cmd = [sys.executable, __file__, "--child", kernel, str(T), "--heads", str(heads)]
            cmd += ["--device", device, "--threads", str(threads)]
            results[kernel, T] = child_result(cmd)
            r = results[kernel, T]
            print(f"T {T:5d}  {kernel:6s} {r['mib']:9.1f} MiB  {r['ms']:9.1f} ms")
    return results


def report(results: dict, heads: int, device: str, threads: int) -> str:
    lines = [
        "| T | SDPA peak MiB | naive peak MiB | memory naive / SDPA | SDPA ms | naive ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for T in LENGTHS:
        s, n = results["sdpa", T], results["naive", T]
        lines.append(
            f"| {T:,} | {s['mib']:,.1f} | {n['mib']:,.1f} | {n['mib'] / max(s['mib'], 1e-9):.1f}x "
            f"| {s['ms']:,.1f} | {n['ms']:,.1f} |"
        )
    first, last = LENGTHS[-3], LENGTHS[-1]  # long enough for the attention to dominate
    slope = {
        k: math.log(results[k, last]["mib"] / max(results[k, first]["mib"], 1e-9))
        / math.log(last / first)
        for k in KERNELS
    }
    less = results["naive", last]["mib"] / results["sdpa", last]["mib"]
    faster = results["naive", last]["ms"] / results["sdpa", last]["ms"]
    lines += [
        "",
        f"From {first:,} to {last:,} tokens peak memory grows as T^{slope['naive']:.2f} for the "
        f"naive kernel (quadratic: T²) and as T^{slope['sdpa']:.2f} for SDPA (linear: T¹, less "
        f"while fixed costs still count); at {last:,} tokens SDPA needs {less:.0f}x less memory "
        f"and runs {faster:.1f}x faster.",
        "",
        f"Causal attention, forward + backward, q/k/v (1, {heads}, T, 64) fp32 on {device}; peak "
        "memory above the inputs (CPU: the child's peak RSS above its RSS before the first call, "
        "so small sizes read near zero); median of 3 calls after one warmup; "
        f"{threads} threads, {platform.machine()}, torch {torch.__version__}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (other work on the machine makes the times "
        "noisy, never the memory).",
        "",
        "Run: `python benchmarks/attention_memory.py`",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=2, metavar=("KERNEL", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.heads, args.device)))
        return
    results = run(args.heads, args.device, args.threads)
    text = report(results, args.heads, args.device, args.threads)
    print(text)
    if not args.no_write:
        update_section(SECTION, text)


if __name__ == "__main__":
    main()
