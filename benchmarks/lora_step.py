"""LoRA training step on SmolLM2-135M: lmforge against transformers + peft.

Both sides start from the same weights (the embedded SmolLM2, fp32), apply LoRA r=8,
alpha 16 on q_proj and v_proj, and run the same AdamW step on the same batch (4 × 128
tokens). Each side runs in its own child process so that its peak resident memory
(ru_maxrss) is its own; the children alternate (A B B A) and the step-time ratio is the
median over paired steps, so load from elsewhere falls on both alike.

Usage: python benchmarks/lora_step.py [--steps 8] [--rounds 2] [--threads 2]
It prints a table and rewrites the "## LoRA training step" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from lmforge.train import default_objective  # the loop's own: the loss only

SECTION = "## LoRA training step"
MODEL = "smollm2-135m-instruct"


def lmforge_model(r: int) -> torch.nn.Module:
    from lmforge import peft
    from lmforge.hub import load_model

    return peft.apply(load_model(MODEL), "lora", {"r": r, "alpha": 2 * r}).model


def peft_model(r: int) -> torch.nn.Module:
    import peft
    from transformers import AutoModelForCausalLM

    from lmforge.hub import ensure_converted

    base = AutoModelForCausalLM.from_pretrained(str(ensure_converted(MODEL)), dtype=torch.float32)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(base, config)


BUILDERS = {"lmforge": lmforge_model, "peft": peft_model}


def child(side: str, args: argparse.Namespace) -> None:
    """Run one side; print one JSON line with step times, first loss and peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BUILDERS[side](args.rank)
    model.train()
    batch = torch.randint(
        0, 49152, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(1)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = {"input_ids": batch, "labels": batch}
    from common import training_steps

    result = training_steps(
        lambda: default_objective(model, inputs), params, args.warmup, args.steps
    )
    print(json.dumps(result))


def run_child(side: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--rank",
        str(args.rank),
    ]
    from common import child_result

    return child_result(cmd)


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args)
        return
    from common import alternating, publish, step_table

    runs = alternating(("lmforge", "peft"), args.rounds, lambda side: run_child(side, args))
    table, first = step_table(runs, 1e-3, tokens=args.batch_size * args.seq_len)
    setup = (
        f"SmolLM2-135M-Instruct fp32, LoRA r={args.rank} alpha={2 * args.rank} on q_proj and "
        f"v_proj ({runs['lmforge'][0]['trainable']:,} trainable parameters), batch "
        f"{args.batch_size} × {args.seq_len}, AdamW; {args.steps} measured steps after "
        f"{args.warmup} warmup per child, {args.rounds} child processes per side alternating; "
        f"peak RSS = ru_maxrss of the child (the smaller of its rounds); {args.threads} threads, "
        f"{platform.machine()}, torch {torch.__version__}; first losses "
        f"{first['lmforge']:.5f} / {first['peft']:.5f}."
    )
    publish(SECTION, table + "\n\n" + setup, "benchmarks/lora_step.py", not args.no_write)


def parse_args() -> argparse.Namespace:
    from common import child_bench_parser

    p = child_bench_parser(__doc__, list(BUILDERS), steps=8, warmup=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    return p.parse_args()


if __name__ == "__main__":
    main()
