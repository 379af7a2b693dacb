"""GPU training: the native CausalLM against transformers' LlamaForCausalLM, eager and compiled.

Four contenders train on the same batch from the same weights (the Llama models get the
native weights; the compiled ones are copies), bf16 autocast, fused AdamW, in one process:

    lmforge                  CausalLM, the loop's default objective (fused head and loss)
    transformers             LlamaForCausalLM, SDPA attention, its own loss
    lmforge+compile          torch.compile of each (the loss compiles with the model)
    transformers+compile

Before timing, one fp32 forward of both models on the batch must give the same loss (same
weights, same function); the first bf16 training losses are reported beside it. Steps
alternate between contenders (ABBA), warmup excluded (compilation happens there).

    tokens/s = batch · seq_len / seconds per step
    MFU      = tokens/s · flops_per_token(seq_len) / peak        (peak: 790 TFLOP/s, H200 bf16)

One profiled eager lmforge step names the attention kernel SDPA chose and the largest GEMMs.

Usage: python benchmarks/gpu_train.py [--preset medium] [--batch-size 16] [--seq-len 1024]
It needs a CUDA device (it says so and exits without one) and rewrites the "## GPU training"
section of BENCHMARKS.md. `--device cpu --preset tiny --no-write` runs the same code on a CPU
as a check of the script itself (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch import nn

from lmforge.model import CausalLM, preset
from lmforge.train import default_objective  # the loop's own: the loss only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure, pair_ratio, publish  # noqa: E402
from pretrain_throughput import llama_from  # noqa: E402

SECTION = "## GPU training"
ATTENTION_KERNELS = ("flash", "fmha", "efficient_attention", "cudnn", "attention")
TARGETS = "lmforge+compile ≥ 1.1× transformers+compile, lmforge ≥ 1.0× transformers, MFU ≥ 44%"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, batch: torch.Tensor, compiled: bool) -> Callable[[], float]:
    """One training step (bf16 autocast forward, backward, fused AdamW); returns the loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    forward = torch.compile(model) if compiled else model
    model.train()

    def step() -> float:
        with torch.autocast(batch.device.type, dtype=torch.bfloat16):
            loss = default_objective(forward, {"input_ids": batch, "labels": batch})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()  # waits for the step to finish

    return step


@torch.no_grad()
def fp32_loss(model: nn.Module, batch: torch.Tensor) -> float:
    return model(input_ids=batch, labels=batch).loss.item()


def kernels(step: Callable[[], float], device: torch.device) -> tuple[list[str], list[str]]:
    """(attention kernels, the three costliest kernels) of one profiled step: CUDA kernels on
    a GPU (flash / memory-efficient / cuDNN attention, GEMMs by name), operators on a CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        step()
        sync(device)
    events = [e for e in prof.key_averages() if (e.device_type == DeviceType.CUDA) == on_gpu]
    cost = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    timed = sorted(events, key=cost, reverse=True)
    attention = [e.key[:90] for e in timed if any(k in e.key.lower() for k in ATTENTION_KERNELS)]
    return attention[:2], [e.key[:90] for e in timed[:3]]


def report(times: dict[str, list[float]], tokens: int, flops: float, peak: float) -> str:
    """A markdown table; speed ratios are medians of adjacent-step ratios against the
    transformers contender of the same kind (eager or compiled)."""
    lines = [
        "| model | ms/step (median) | tokens/s | MFU | speed vs transformers (same mode) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ts in times.items():
        seconds = statistics.median(ts)
        reference = "transformers+compile" if name.endswith("+compile") else "transformers"
        ratio = pair_ratio(times[reference], ts)
        mfu = tokens / seconds * flops / peak
        lines.append(
            f"| {name} | {seconds * 1e3:.1f} | {tokens / seconds:,.0f} | {mfu:.1%} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def verdict(times: dict[str, list[float]], tokens: int, flops: float, peak: float) -> str:
    compiled = pair_ratio(times["transformers+compile"], times["lmforge+compile"])
    eager = pair_ratio(times["transformers"], times["lmforge"])
    mfu = tokens / statistics.median(times["lmforge+compile"]) * flops / peak
    met = compiled >= 1.1 and eager >= 1.0 and mfu >= 0.44
    return (
        f"Targets ({TARGETS}): {'met' if met else 'not met'} — compiled {compiled:.2f}×, "
        f"eager {eager:.2f}×, lmforge+compile MFU {mfu:.1%}."
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="medium", help="lmforge model preset")
    p.add_argument("--vocab-size", type=int, default=50_304)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20, help="measured steps per contender")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps (compilation)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 peak of the GPU")
    p.add_argument("--device", default="cuda", help="cuda (cpu only checks the script)")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return p.parse_args()


def contenders(args: argparse.Namespace, device: torch.device) -> tuple[dict, CausalLM, float]:
    """The four training steps, the native model, and the fp32 loss both models agree on."""
    torch.manual_seed(0)
    config = preset(args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len)
    native = CausalLM(config).to(device)
    llama = llama_from(config).to(device)
    llama.load_state_dict(native.state_dict())  # same names, same weights
    batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=device)
    ours, theirs = fp32_loss(native, batch), fp32_loss(llama, batch)
    if abs(ours - theirs) > 1e-4 * abs(theirs):
        raise SystemExit(f"the two models differ: fp32 losses {ours} and {theirs}")
    models = {
        "lmforge": native,
        "transformers": llama,
        "lmforge+compile": copy.deepcopy(native),
        "transformers+compile": copy.deepcopy(llama),
    }
    steps = {name: make_step(m, batch, name.endswith("+compile")) for name, m in models.items()}
    return steps, native, ours


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu_train.py measures training on a CUDA GPU, and this machine has "
            "none (torch.cuda.is_available() is False); run it where a GPU is visible, or "
            "check the script itself with --device cpu --preset tiny --no-write"
        )
    steps, native, fp32 = contenders(args, device)
    first = {name: step() for name, step in steps.items()}  # compiles the compiled ones
    attention, costliest = kernels(steps["lmforge"], device)
    times = measure(steps, args.steps, max(args.warmup - 1, 0))  # one warmup step ran above
    tokens = args.batch_size * args.seq_len
    flops, peak = native.flops_per_token(args.seq_len), args.peak_tflops * 1e12
    config = native.config
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (script check)"
    body = "\n\n".join(
        [
            report(times, tokens, flops, peak),
            verdict(times, tokens, flops, peak),
            f"preset `{args.preset}` (d_model {config.d_model}, {config.n_layer} layers, "
            f"{config.n_head}/{config.n_kv_head} heads, vocab {config.vocab_size}, "
            f"{native.num_parameters() / 1e6:.1f}M parameters), batch {args.batch_size} × "
            f"{args.seq_len}, bf16 autocast, fused AdamW; {args.steps} measured steps each "
            f"after {args.warmup} warmup, alternating ABBA; {where}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}; peak {args.peak_tflops:g} TFLOP/s; "
            f"{flops / 1e6:.1f} MFLOP per token.",
            f"Same weights: fp32 loss {fp32:.5f} for both models; first bf16 training losses "
            + ", ".join(f"{name} {loss:.4f}" for name, loss in first.items())
            + ".",
            f"Profiled eager lmforge step: attention ran {', '.join(attention) or 'nothing'}; "
            f"costliest kernels {'; '.join(costliest)}.",
        ]
    )
    publish(SECTION, body, "benchmarks/gpu_train.py", write=not args.no_write)


if __name__ == "__main__":
    main()
