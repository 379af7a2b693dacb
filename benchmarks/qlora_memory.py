"""Memory of QLoRA and of the 8-bit and paged optimizers, fine-tuning SmolLM2-135M.

Every side runs in its own child process (so ru_maxrss, its peak resident memory, is its
own) on the same batch of 4 × 128 tokens through the training loop's objective:

    lora        fp32 base, LoRA r=8 α=16 on every linear layer, AdamW
    qlora       NF4 + double-quantized base, the frozen (tied) embedding in bfloat16 as
                in the paper, computed in fp32; the same LoRA, AdamW
    lora+gc     lora with gradient checkpointing (activations recomputed in backward)
    qlora+gc    qlora with gradient checkpointing, as in the paper  target: RSS ≤ 0.6× lora+gc
    …@live      the same, with glibc told to return every freed buffer of 128 KiB or more
                to the system (MALLOC_MMAP_THRESHOLD_): peak RSS then follows the memory
                the step really holds instead of the heap's fragmentation (and steps slow)
    full        every weight trains, fp32 AdamW (state: 2 × 4 bytes per weight)
    full-8bit   every weight trains, 8-bit AdamW                  target: state ≈ 0.25× full
    full-paged  every weight trains, paged AdamW, 64 MiB budget   RSS ≈ full − state + budget

Usage: python benchmarks/qlora_memory.py [--steps 3] [--rounds 2] [--threads N]
It prints a table and rewrites the "## QLoRA and optimizer memory" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmforge.train import default_objective  # the loop's own: the loss only

SECTION = "## QLoRA and optimizer memory"
MODEL = "smollm2-135m-instruct"
LORA = {"r": 8, "alpha": 16, "targets": "all-linear"}
BUDGET = 64 << 20  # paged AdamW's RAM budget


def build(side: str, page_dir: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from lmforge import peft
    from lmforge.hub import load_model
    from lmforge.model import set_gradient_checkpointing
    from lmforge.train.optim import build_optimizer

    side = side.removesuffix("@live")
    method, checkpointing = side.removesuffix("+gc"), side.endswith("+gc")
    quantize = peft.build("qlora", LORA).quantization() if method == "qlora" else None
    model = load_model(MODEL, quantize=quantize)
    if method in ("lora", "qlora"):
        model = peft.apply(model, method, LORA).model
    set_gradient_checkpointing(model, checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    name, options = {
        "full-8bit": ("adamw8bit", {}),
        "full-paged": ("paged_adamw", {"max_resident_bytes": BUDGET, "page_dir": page_dir}),
    }.get(side, ("adamw", {}))
    return model, build_optimizer(name, params, lr=1e-5, **options)


def child(side: str, args: argparse.Namespace) -> None:
    """Run one side; print one JSON line with step times, first loss, state bytes, peak RSS."""
    from lmforge import hub, peft  # noqa: F401 (imported before the baseline is read)
    from lmforge.train.optim import state_bytes

    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Python + torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.page_dir) as page_dir:
        model, optimizer = build(side, page_dir)
        model.train()
        batch = torch.randint(
            0, 49152, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(1)
        )
        times, losses = [], []
        for i in range(1 + args.steps):
            start = time.perf_counter()
            loss = default_objective(model, {"input_ids": batch, "labels": batch})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - start)
            losses.append(loss.item())
        state = state_bytes(optimizer)
        if hasattr(optimizer, "close"):
            optimizer.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"times": times, "first_loss": losses[0], "rss_mb": rss_mb, "base_mb": base_mb}
    print(json.dumps({**result, "state": state}))


def run_child(side: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    cmd += ["--seq-len", str(args.seq_len), "--page-dir", args.page_dir]
    from common import child_result

    env = {"MALLOC_MMAP_THRESHOLD_": "131072"} if side.endswith("@live") else None
    return child_result(cmd, env)


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import update_section

    runs = {}
    for side in SIDES:  # a side's run with the smallest peak (heap fragmentation varies)
        rounds = [run_child(side, args) for _ in range(args.rounds)]
        runs[side] = min(rounds, key=lambda r: r["rss_mb"])
        peaks = ", ".join(f"{r['rss_mb']:,.0f}" for r in rounds)
        print(f"{side}: {peaks} MB", file=sys.stderr)
    tokens = args.batch_size * args.seq_len
    lines = [
        "| side | s/step | tokens/s | optimizer state | peak RSS | RSS vs lora | RSS vs full "
        "| above Python + torch | that vs lora |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side, r in runs.items():
        sec = statistics.median(r["times"])
        grown = r["rss_mb"] - r["base_mb"]
        vs_lora = grown_vs = "-"
        if "lora" in side:  # against the LoRA side with the same settings
            lora = runs[side.replace("qlora", "lora")]
            vs_lora = f"{r['rss_mb'] / lora['rss_mb']:.2f}x"
            grown_vs = f"{grown / (lora['rss_mb'] - lora['base_mb']):.2f}x"
        lines.append(
            f"| {side} | {sec:.2f} | {tokens / sec:,.0f} | {r['state'] / 2**20:,.1f} MiB | "
            f"{r['rss_mb']:,.0f} MB | {vs_lora} | "
            f"{r['rss_mb'] / runs['full']['rss_mb']:.2f}x | {grown:,.0f} MB | {grown_vs} |"
        )
    full, paged = runs["full"], runs["full-paged"]

    def ratio(suffix: str) -> str:
        return f"{runs['qlora' + suffix]['rss_mb'] / runs['lora' + suffix]['rss_mb']:.2f}x"

    bound = full["rss_mb"] - full["state"] / 2**20 + BUDGET / 2**20
    setup = (
        f"SmolLM2-135M-Instruct, batch {args.batch_size} × {args.seq_len}, {args.steps} measured "
        f"steps after one warmup, {args.rounds} child process(es) per side, peak RSS = "
        "ru_maxrss of the child with the smallest; "
        f"QLoRA/LoRA RSS {runs['qlora']['rss_mb'] / runs['lora']['rss_mb']:.2f}x, with gradient "
        f"checkpointing on both {ratio('+gc')}, and so with freed buffers returned "
        f'{ratio("+gc@live")} (target ≤ 0.6); "above Python + torch" subtracts the '
        f"child's RSS after its imports ({runs['lora']['base_mb']:,.0f} MB), which no "
        "fine-tuning method changes; "
        f"8-bit/fp32 AdamW state {runs['full-8bit']['state'] / full['state']:.4f}x (target "
        f"≈ 0.25); paged AdamW with a {BUDGET >> 20} MiB budget peaked at "
        f"{paged['rss_mb']:,.0f} MB against full − fp32 state + budget = {bound:,.0f} MB "
        f"(slack {paged['rss_mb'] - bound:+,.0f} MB); first losses "
        + ", ".join(f"{r['first_loss']:.4f}" for r in runs.values())
        + f"; {args.threads} threads, {platform.machine()}, torch {torch.__version__}."
    )
    body = "\n".join(lines) + "\n\n" + setup
    print(body)
    if not args.no_write:
        update_section(SECTION, body + "\n\nRun: `python benchmarks/qlora_memory.py`")


SIDES = (
    "lora",
    "qlora",
    "lora+gc",
    "qlora+gc",
    "lora+gc@live",
    "qlora+gc@live",
    "full",
    "full-8bit",
    "full-paged",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="measured steps per child")
    p.add_argument("--rounds", type=int, default=2, help="child processes per side")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--page-dir", default=".", help="a directory on disk for the page file")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    main()
