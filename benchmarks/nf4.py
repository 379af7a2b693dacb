"""NF4Linear against bitsandbytes' Linear4bit on the CPU, at SmolLM2-135M's layer shapes.

Both layers hold the same NF4 weights (block 64, double-quantized constants; their outputs
are identical, as tests/test_quant_nf4.py checks) and run forward + backward to the input
(the base of a QLoRA layer is frozen) on the same activations, alternating ABBA. The time
ratio is bitsandbytes / lmforge per adjacent pair, median: above 1 means lmforge is faster.
A backward straight after its layer's forward finds Ŵ still in lmforge's scratch buffer and
skips the rebuild (as the last layer of each size does under gradient checkpointing); the
column "rebuilding Ŵ" times the same layer made to rebuild it, as any other backward does.

Usage: python benchmarks/nf4.py [--rows 512] [--calls 30] [--threads N]
It prints a table and rewrites the "## NF4 linear layer" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from lmforge.quant import NF4Linear

sys.path.insert(0, str(Path(__file__).parent))
from common import measure, pair_ratio, update_section  # noqa: E402

SECTION = "## NF4 linear layer"
SHAPES = {  # SmolLM2-135M: (in, out)
    "q_proj / o_proj": (576, 576),
    "k_proj / v_proj": (576, 192),
    "gate_proj / up_proj": (576, 1536),
    "down_proj": (1536, 576),
}


def bnb_layer(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=False,
        compute_dtype=torch.float32,
        quant_type="nf4",
        compress_statistics=True,
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.data.clone(), requires_grad=False, quant_type="nf4", blocksize=64
    )
    return layer.to("cpu")  # quantizes


def step(layer: nn.Module, x: torch.Tensor):
    def run() -> None:
        x.grad = None
        layer(x).sum().backward()

    return run


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "| layer (in → out) | bitsandbytes ms | lmforge ms | speed vs bitsandbytes "
        "| rebuilding Ŵ: ms | speed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ratios, rebuild_ratios = [], []
    for name, (n_in, n_out) in SHAPES.items():
        torch.manual_seed(0)
        linear = nn.Linear(n_in, n_out, bias=False)
        ours, ref = NF4Linear.from_linear(linear), bnb_layer(linear)
        rebuilding = NF4Linear.from_linear(linear)
        rebuilding._holder = lambda: None  # records nothing, so its backward never reuses
        x = torch.randn(args.rows, n_in, requires_grad=True)
        with torch.no_grad():
            if not torch.equal(ours(x), ref(x)):
                raise SystemExit(f"{name}: the two layers disagree")
        steps = {"bnb": step(ref, x), "lmforge": step(ours, x), "rebuild": step(rebuilding, x)}
        times = measure(steps, args.calls, 3)
        ratio = pair_ratio(times["bnb"], times["lmforge"])
        rebuild_ratio = pair_ratio(times["bnb"], times["rebuild"])
        ratios.append(ratio)
        rebuild_ratios.append(rebuild_ratio)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        lines.append(
            f"| {name} ({n_in} → {n_out}) | {ms['bnb']:.2f} | {ms['lmforge']:.2f} | {ratio:.2f}x "
            f"| {ms['rebuild']:.2f} | {rebuild_ratio:.2f}x |"
        )
        print(lines[-1], file=sys.stderr)
    setup = (
        f"Forward + backward to the input of {args.rows} rows, fp32 compute, NF4 block 64 with "
        f"double quantization; median over {args.calls} ABBA calls after 3 warmup; geometric "
        f"mean speed {statistics.geometric_mean(ratios):.2f}x (rebuilding Ŵ in the backward "
        f"{statistics.geometric_mean(rebuild_ratios):.2f}x); {args.threads} threads, "
        f"{platform.machine()}, torch {torch.__version__}, bitsandbytes "
        f"{__import__('bitsandbytes').__version__}. Time ratio lmforge / bitsandbytes = "
        "1 / speed (target ≤ 1.0)."
    )
    body = "\n".join(lines) + "\n\n" + setup
    print(body)
    if not args.no_write:
        update_section(SECTION, body + "\n\nRun: `python benchmarks/nf4.py`")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=512, help="activation rows (batch × tokens)")
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return p.parse_args()


if __name__ == "__main__":
    main()
