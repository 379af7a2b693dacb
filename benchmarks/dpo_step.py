"""A LoRA DPO step on SmolLM2-135M: lmforge against trl's DPOTrainer, on the same batch.

Both sides start from the same weights (the embedded SmolLM2, fp32), apply LoRA r=8, alpha
16 on q_proj and v_proj, and take AdamW steps on the same batch of 4 pairs (a 96-token
prompt, 32-token replies). π_ref is the base with the delta disabled on both sides: trl
turns the peft adapter off for its reference pass; lmforge swaps the delta's starting values
in (B = 0). Each side runs in its own child process so that its peak resident memory
(ru_maxrss) is its own; the children alternate (A B B A), and the step-time ratio is the
median over paired steps. Before the first update π = π_ref, so both losses are ln 2.

Usage: python benchmarks/dpo_step.py [--steps 6] [--rounds 2] [--threads 2]
It prints a table and rewrites the "## DPO step" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import version

import torch

SECTION = "## DPO step"
MODEL = "smollm2-135m-instruct"


def batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """2B rows, chosen first: prompt + reply, the reply marked in completion_mask."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(10, 49152, (args.pairs, args.prompt_len), generator=g)
    replies = torch.randint(10, 49152, (2 * args.pairs, args.reply_len), generator=g)
    ids = torch.cat([prompt.repeat(2, 1), replies], dim=1)
    completion = torch.zeros_like(ids)
    completion[:, args.prompt_len :] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}


def lmforge_step(args: argparse.Namespace):
    from lmforge import peft
    from lmforge.align.dpo import DPOObjective, DPOSettings
    from lmforge.align.logprobs import Reference
    from lmforge.hub import load_model

    cfg = {"r": args.rank, "alpha": 2 * args.rank, "targets": ["q_proj", "v_proj"]}
    model = peft.apply(load_model(MODEL), "lora", cfg, seed=0).model.train()
    objective = DPOObjective(DPOSettings(beta=0.1), Reference(model))
    b = batch(args)
    labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": labels}
    return model, lambda: objective(model, inputs)


def trl_step(args: argparse.Namespace):
    import peft
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.hub import ensure_converted

    path = str(ensure_converted(MODEL))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = peft.LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(base, config)
    dpo = trl.DPOConfig(
        output_dir="/tmp/lmforge-dpo-bench",
        report_to=[],
        use_cpu=True,
        bf16=False,
        beta=0.1,
        save_strategy="no",
    )
    trainer = trl.DPOTrainer(
        model=model,
        args=dpo,
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
    )
    model.train()
    b = batch(args)
    return model, lambda: trainer.compute_loss(model, dict(b))


BUILDERS = {"lmforge": lmforge_step, "trl": trl_step}


def child(side: str, args: argparse.Namespace) -> None:
    """Run one side; print one JSON line with step times, first loss and peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, loss_fn = BUILDERS[side](args)
    params = [p for p in model.parameters() if p.requires_grad]
    from common import training_steps

    print(json.dumps(training_steps(loss_fn, params, args.warmup, args.steps)))


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args)
        return
    from common import alternating, child_result, publish, step_table

    flags = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--pairs",
        str(args.pairs),
        "--prompt-len",
        str(args.prompt_len),
        "--reply-len",
        str(args.reply_len),
        "--rank",
        str(args.rank),
    ]
    runs = alternating(
        ("lmforge", "trl"),
        args.rounds,
        lambda side: child_result([sys.executable, __file__, "--child", side, *flags]),
    )
    table, first = step_table(runs, 1e-4)
    setup = (
        f"SmolLM2-135M-Instruct fp32, LoRA r={args.rank} on q_proj and v_proj "
        f"({runs['lmforge'][0]['trainable']:,} trainable parameters), DPO (sigmoid, β=0.1), "
        f"{args.pairs} pairs of a {args.prompt_len}-token prompt and {args.reply_len}-token "
        f"replies, π_ref = the delta disabled; {args.steps} measured steps after {args.warmup} "
        f"warmup per child, {args.rounds} child processes per side alternating; peak RSS = "
        f"ru_maxrss of the child; {args.threads} threads, {platform.machine()}, torch "
        f"{torch.__version__}, trl {version('trl')}, peft {version('peft')}, transformers "
        f"{version('transformers')}; first losses {first['lmforge']:.6f} / {first['trl']:.6f}."
    )
    publish(SECTION, table + "\n\n" + setup, "benchmarks/dpo_step.py", not args.no_write)


def parse_args() -> argparse.Namespace:
    from common import child_bench_parser

    p = child_bench_parser(__doc__, list(BUILDERS), steps=6, warmup=1)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--reply-len", type=int, default=32)
    return p.parse_args()


if __name__ == "__main__":
    main()
