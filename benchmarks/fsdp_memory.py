"""Memory per rank: what each of N processes holds between steps under DDP and under FSDP.

torchrun starts N ranks on this machine (gloo, CPU), once with train.distributed ddp and once
with fsdp; each rank trains the same native model for a few steps through the one loop and
counts the bytes of the tensors it holds after a step:

    parameters    its copy (DDP) or its 1/N slice (FSDP) of every weight
    gradients     likewise; they stay in .grad until the next step begins
    optimizer     AdamW's two moments and step counters, for what it holds

FSDP should hold ≈ 1/N of DDP. Peak RSS is reported beside it: the whole process, so PyTorch
itself, activations, FSDP's per-block gathered weights, and the whole model, which every rank
builds before fully_shard keeps its slice.

Usage: python benchmarks/fsdp_memory.py [--nproc 2] [--preset base]
It prints a table and rewrites the "## Memory per rank: DDP vs FSDP" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import anchor, publish  # noqa: E402

SECTION = "## Memory per rank: DDP vs FSDP"
MODES = ("ddp", "fsdp")


def local_bytes(t: Tensor) -> int:
    """Bytes this process holds of `t` (its slice, for a sharded DTensor)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


class Count:
    """A loop callback that counts what this rank holds after the last step."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    def on_step_end(self, state) -> None:
        params = list(state.model.parameters())
        moments = [v for s in state.optimizer.state.values() for v in s.values()]
        self.held = {
            "parameters": sum(local_bytes(p) for p in params),
            "gradients": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(local_bytes(v) for v in moments if isinstance(v, Tensor)),
        }


def worker(args: argparse.Namespace) -> None:
    """One rank of one mode; writes OUT/<mode>-rank<r>.json."""
    from lmforge.data.loader import PackedBatches
    from lmforge.model import CausalLM, preset
    from lmforge.train import TrainConfig, train

    rank, world, out = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), Path(args.worker)
    tokens = np.random.default_rng(0).integers(0, args.vocab_size, 200_000).astype(np.uint16)
    torch.manual_seed(0)
    model = CausalLM(preset(args.preset, vocab_size=args.vocab_size, max_seq_len=128))
    batches = PackedBatches(tokens, 128, 2 * world, seed=0)
    config = TrainConfig(
        max_steps=args.steps, batch_size=2 * world, warmup_steps=1, save_every=0,
        eval_every=0, device="cpu", distributed=args.mode,
    )  # fmt: skip
    count = Count()
    train(model, batches, config, out / args.mode, callbacks=[count], progress=False)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {**count.held, "peak_rss": peak_rss, "parameters_count": model.num_parameters()}
    (out / f"{args.mode}-rank{rank}.json").write_text(json.dumps(record))


def report(records: dict[str, list[dict]]) -> str:
    mib = 1 << 20
    lines = [
        "| mode | parameters | gradients | optimizer state | total | vs DDP | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total = {
        m: max(r["parameters"] + r["gradients"] + r["optimizer"] for r in records[m]) for m in MODES
    }
    for mode in MODES:
        worst = max(records[mode], key=lambda r: r["parameters"] + r["gradients"] + r["optimizer"])
        lines.append(
            f"| {mode} | {worst['parameters'] / mib:.1f} MiB | {worst['gradients'] / mib:.1f} MiB "
            f"| {worst['optimizer'] / mib:.1f} MiB | {total[mode] / mib:.1f} MiB "
            f"| {total[mode] / total['ddp']:.2f}× | "
            f"{max(r['peak_rss'] for r in records[mode]) / mib:.0f} MiB |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes (ranks) on this machine")
    p.add_argument("--preset", default="base", help="lmforge model preset")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # set by torchrun's children
    p.add_argument("--mode", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    out = Path(tempfile.mkdtemp(prefix="lmforge-fsdp-memory-"))
    flags = [f"--preset={args.preset}", f"--steps={args.steps}"]  # the ranks: WORLD_SIZE
    flags += [f"--vocab-size={args.vocab_size}", f"--worker={out}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.nproc))}
    for mode in MODES:  # a process group each: peak RSS is the mode's own
        subprocess.run([*torchrun, __file__, *flags, f"--mode={mode}"], check=True, env=env)
    records = {
        m: [json.loads((out / f"{m}-rank{r}.json").read_text()) for r in range(args.nproc)]
        for m in MODES
    }
    n = records["ddp"][0]["parameters_count"]
    body = "\n\n".join(
        [
            report(records),
            f"Per rank, the largest of {args.nproc} ranks, after step {args.steps}: preset "
            f"`{args.preset}` (vocab {args.vocab_size}, {n / 1e6:.1f}M parameters, fp32), "
            f"AdamW, {args.nproc} processes on one CPU machine over gloo; parameters, "
            "gradients and optimizer state are the bytes of the tensors the rank holds "
            "(its slices under FSDP); peak RSS is the whole process, PyTorch's runtime and "
            "the whole model each rank builds before FSDP shards it included; "
            f"{anchor()}.",
        ]
    )
    publish(SECTION, body, "benchmarks/fsdp_memory.py", write=not args.no_write)


if __name__ == "__main__":
    main()
