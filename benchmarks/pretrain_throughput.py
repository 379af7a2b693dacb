"""Pretraining throughput: the native CausalLM against transformers' LlamaForCausalLM.

Both models are built from the same ModelConfig (the Llama model gets the native weights,
so the first losses must agree), trained on the same batch with the same AdamW step, fp32
on the CPU, in one process. Measurement alternates one step of each model (ABBA order,
warmup steps excluded) so that machine noise falls on both alike.

    tokens/s = batch · seq_len / seconds per step
    MFU      = tokens/s · flops_per_token(seq_len) / peak     (peak: a large fp32 matmul)

Usage: python benchmarks/pretrain_throughput.py [--preset small] [--steps 30] [--threads 2]
It prints a table and rewrites the "## Pretraining throughput" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn

from lmforge.model import CausalLM, ModelConfig, preset
from lmforge.train import default_objective  # the loop's own: the loss only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure, pair_ratio, publish  # noqa: E402

SECTION = "## Pretraining throughput"


def llama_from(config: ModelConfig) -> nn.Module:
    """transformers' LlamaForCausalLM with exactly the shape of `config` (fused SDPA)."""
    from transformers import LlamaForCausalLM

    from lmforge.model.hf import to_hf_config

    hf_config = to_hf_config(config)
    hf_config._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_config)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n×n @ n×n matmul: the ceiling for MFU."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up the kernel and the allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def make_step(model: nn.Module, batch: torch.Tensor) -> Callable[[], float]:
    """One training step (forward, backward, AdamW); returns the loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    model.train()

    def step() -> float:
        loss = default_objective(model, {"input_ids": batch, "labels": batch})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    return step


def report(
    times: dict[str, list[float]], reference: str, tokens: int, flops: float, peak: float
) -> str:
    """A markdown table. Speed ratios are medians of adjacent-step ratios: a burst of load
    from elsewhere slows both steps of a pair, so it cancels out of their ratio."""
    lines = [
        f"| model | ms/step (median) | tokens/s | MFU | speed vs {reference} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ts in times.items():
        seconds = statistics.median(ts)
        ratio = pair_ratio(times[reference], ts)
        mfu = tokens / seconds * flops / (peak * 1e9)
        lines.append(
            f"| {name} | {seconds * 1e3:.0f} | {tokens / seconds:,.0f} | {mfu:.1%} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help="lmforge model preset")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="measured steps per model")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps per model")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = preset(args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len)
    native = CausalLM(config)
    llama = llama_from(config)
    llama.load_state_dict(native.state_dict())  # same names, same weights
    batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len))
    steps = {"lmforge": make_step(native, batch), "transformers": make_step(llama, batch)}
    first_losses = {name: step() for name, step in steps.items()}
    if abs(first_losses["lmforge"] - first_losses["transformers"]) > 1e-4:
        raise SystemExit(f"the two models differ: first losses {first_losses}")
    peak = matmul_peak_gflops()
    times = measure(steps, args.steps, max(args.warmup - 1, 0))  # one warmup step ran above
    peak = max(peak, matmul_peak_gflops())  # measured before and after: keep the better
    flops = native.flops_per_token(args.seq_len)
    tokens = args.batch_size * args.seq_len
    table = report(times, "transformers", tokens, flops, peak)
    setup = (
        f"preset `{args.preset}` (d_model {config.d_model}, {config.n_layer} layers, "
        f"{config.n_head}/{config.n_kv_head} heads, d_ff {config.d_ff}, vocab {config.vocab_size}, "
        f"{native.num_parameters() / 1e6:.1f}M parameters), batch {args.batch_size} × "
        f"{args.seq_len} tokens, fp32 AdamW, {args.steps} measured steps each after "
        f"{args.warmup} warmup, alternating ABBA; speed = median over step pairs of "
        f"(transformers time / this time); {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; "
        f"fp32 matmul peak {peak:.0f} GFLOP/s; {flops / 1e6:.1f} MFLOP per token."
    )
    body = table + "\n\n" + setup
    publish(SECTION, body, "benchmarks/pretrain_throughput.py", write=not args.no_write)


if __name__ == "__main__":
    main()
