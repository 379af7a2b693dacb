"""QLoRA at our scale: 4-bit NormalFloat keeps SmolLM2's quality where other 4-bit types lose it.

The QLoRA paper (Dettmers et al., 2023) makes three claims this lab checks on SmolLM2-135M:

1. NF4, whose 16 levels are quantiles of a normal distribution, quantizes normally
   distributed weights with less error than 4-bit floats (FP4) or evenly spaced integers
   (Int4) — measured on random normal weights and on the model's own weights.
2. The quantized model keeps the float model's perplexity best with NF4 (the paper's
   Table 2); double quantization costs almost nothing while cutting the block constants
   from 0.5 to 0.127 bits per weight.
3. LoRA on an NF4 base (QLoRA) fine-tunes about as well as LoRA on the float base, in
   less memory; paged AdamW keeps the optimizer state under a RAM budget.

Perplexity is measured on the BBC News test articles (never trained on); fine-tuning uses
the peft-compare task and settings (lmforge/lab/peft_compare.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lmforge.atomic import atomic_write_json
from lmforge.data.labelled import load_labelled
from lmforge.eval.ppl import perplexity
from lmforge.hub import load_model, load_tokenizer
from lmforge.lab.base import experiment
from lmforge.lab.peft_compare import Run, run_one, settings
from lmforge.plots import plot_bars, plot_curves
from lmforge.quant import overhead_bits, quantization_error, quantize_model
from lmforge.report import Report
from lmforge.train.optim import build_optimizer

MODEL = "smollm2-135m-instruct"
VARIANTS = {  # name → quantize_model settings (None = the float model)
    "fp32": None,
    "Int4": {"quant_type": "int4", "double_quant": False},
    "FP4": {"quant_type": "fp4", "double_quant": False},
    "NF4": {"quant_type": "nf4", "double_quant": False},
    "NF4 + DQ": {"quant_type": "nf4", "double_quant": True},
}
TYPES = ("nf4", "fp4", "int4")


def weight_errors(quick: bool) -> list[list[Any]]:
    """Mean squared quantization error (block 64) of each 4-bit type on normal and real weights."""
    normal = torch.randn(256 if quick else 1024, 1024, generator=torch.Generator().manual_seed(0))
    model = load_model(MODEL)
    real = [m.weight.detach() for n, m in model.named_modules() if n.endswith("_proj")]
    real = real[:7] if quick else real
    rows = []
    for qt in TYPES:
        on_normal = quantization_error(normal, qt)["mse"]
        sizes = [w.numel() for w in real]
        on_real = sum(quantization_error(w, qt)["mse"] * n for w, n in zip(real, sizes))
        rows.append([qt.upper(), on_normal, on_real / sum(sizes)])
    return rows


def perplexities(quick: bool) -> dict[str, dict[str, float]]:
    """Perplexity on held-out BBC text of the float model and each quantized variant."""
    tokenizer = load_tokenizer(MODEL)
    texts = [e.text for e in load_labelled("bbc-news", "test")]
    out = {}
    for name, quant in tqdm(VARIANTS.items(), desc="perplexity", unit="variant"):
        model = load_model(MODEL).eval()
        bits = 32.0
        if quant is not None:
            bits = quantize_model(model, **quant).bits_per_parameter
        result = perplexity(
            model, tokenizer, texts, max_length=256, max_tokens=1024 if quick else 16384
        )
        out[name] = {"perplexity": result.perplexity, "bits": bits}
    return out


def optimizer_curves(quick: bool, page_dir: Path) -> dict[str, list[float]]:
    """Loss per step of one seeded regression (a 2-layer MLP fitting a random teacher) under
    fp32, 8-bit and paged AdamW, all from the same start."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 64, generator=g)
    teacher = torch.randn(64, 1, generator=g)
    y = torch.tanh(x @ teacher) + 0.1 * torch.randn(8192, 1, generator=g)
    options = {"adamw8bit": {}, "paged_adamw": {"page_bytes": 4096, "max_resident_bytes": 8192}}
    curves = {}
    for name in ("adamw", "adamw8bit", "paged_adamw"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))
        extra = {
            **options.get(name, {}),
            **({"page_dir": str(page_dir)} if "paged" in name else {}),
        }
        opt = build_optimizer(name, net.parameters(), lr=3e-3, weight_decay=0.01, **extra)
        losses = []
        for _ in range(50 if quick else 200):
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if hasattr(opt, "close"):
            opt.close()
        curves[name] = losses
    return curves


def finetune_runs(quick: bool) -> list[Run]:
    lora = {"r": 8, "alpha": 16, "targets": "all-linear"}
    paged = {"optimizer": "paged_adamw", "optimizer_options": {"max_resident_bytes": 8 << 20}}
    recompute = {"gradient_checkpointing": True}
    runs = [Run("LoRA (fp32 base)", "lora", lora), Run("QLoRA (NF4 + DQ base)", "qlora", lora)]
    if not quick:
        runs += [
            Run("QLoRA + paged AdamW", "qlora", lora, train=paged),
            Run("LoRA + gradient checkpointing", "lora", lora, train=recompute),
            Run("QLoRA + gradient checkpointing", "qlora", lora, train=recompute),
        ]
    return runs


def cached(path: Path, quick: bool, compute: Callable[[bool], Any]) -> Any:
    """compute(quick), or what an earlier run of the lab saved at `path` for the same size
    (a rerun that only adds fine-tuning runs does not measure everything again)."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("quick") == quick:
            return saved["result"]
    result = compute(quick)
    atomic_write_json(path, {"quick": quick, "result": result})
    return result


def _finetune_rows(plan: list[Run], results: dict[str, dict]) -> list[list[Any]]:
    rows = []
    for run in plan:
        r = results[run.name]
        if "error" in r:
            rows.append([run.name, "failed: " + r["error"][:60], "-", "-", "-"])
            continue
        rows.append(
            [
                run.name,
                f"{100 * r['test_accuracy']:.1f}%",
                f"{r['trainable']:,}",
                f"{r['train_seconds']:.0f} s",
                f"{r['peak_rss_mb']:,.0f} MB",
            ]
        )
    return rows


def _optimizer_section(report: Report, quick: bool, out_dir: Path) -> dict[str, list[float]]:
    """Loss curves of fp32, 8-bit and paged AdamW, described and plotted."""
    curves = optimizer_curves(quick, out_dir)
    gap = max(abs(a - b) / b for a, b in zip(curves["adamw8bit"], curves["adamw"]))
    exact = curves["paged_adamw"] == curves["adamw"]
    report.text(
        "Optimizers on a small regression (a 2-layer MLP, 64 → 64 → 1, fitting 8,192 noisy "
        f"points, full batch, lr 3e-3, {len(curves['adamw'])} steps, one start): 8-bit AdamW's "
        f"loss stays within {100 * gap:.1f}% of fp32 AdamW's at every step (final "
        f"{curves['adamw8bit'][-1]:.4f} vs {curves['adamw'][-1]:.4f}); paged AdamW, with a "
        f"budget of 2 pages of 4 KiB, follows fp32 AdamW "
        + ("exactly (every loss identical)." if exact else "NOT exactly: a bug.")
    )
    steps = list(range(1, len(curves["adamw"]) + 1))
    plot_curves(
        {name: (steps, losses) for name, losses in curves.items()},
        report.figure("optimizers.png", "Loss curves of fp32, 8-bit and paged AdamW"),
        title="AdamW state in fp32, 8 bits, pages",
        logy=True,
    )
    return curves


@experiment("qlora", "NF4 keeps a 4-bit model's quality; QLoRA fine-tunes in less memory.", 25)
def run(out_dir: Path, quick: bool) -> Report:
    report = Report("QLoRA on SmolLM2-135M: NF4, double quantization, paged optimizers", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    errors = cached(out_dir / "errors.json", quick, weight_errors)
    report.table(
        ["type", "MSE, N(0, 1) weights", "MSE, SmolLM2 projections"],
        errors,
        "Block-wise (64) 4-bit quantization error",
    )
    ppl = cached(out_dir / "perplexity.json", quick, perplexities)
    report.table(
        ["model", "bits per quantized weight", "perplexity on BBC test articles"],
        [[n, f"{v['bits']:.3f}", f"{v['perplexity']:.3f}"] for n, v in ppl.items()],
        "Perplexity after quantizing every linear layer but the head (the paper's Table 2)",
    )
    report.text(
        f"Block constants cost {overhead_bits(64, False):.3f} bits per weight in fp32 and "
        f"{overhead_bits(64, True):.6f} after double quantization (8-bit codes in blocks of "
        "256 plus one fp32 scale per block)."
    )
    plot_bars(
        {n: v["perplexity"] for n, v in ppl.items()},
        report.figure("perplexity.png", "Perplexity per 4-bit data type"),
        title="Perplexity on held-out BBC text",
        ylabel="perplexity",
        reference=ppl["fp32"]["perplexity"],
        reference_label="fp32",
    )
    curves = _optimizer_section(report, quick, out_dir)
    s = settings(quick)
    plan = finetune_runs(quick)
    runs = {r.name: run_one(r, out_dir, s) for r in tqdm(plan, desc="qlora", unit="run")}
    report.text(
        f"Fine-tuning: the peft-compare task, {s['steps']} steps of {s['batch']} articles cut "
        f"to {s['max_length']} tokens, LoRA r=8 α=16 on every linear layer in every run. "
        "Gradient checkpointing recomputes each block in backward instead of keeping its "
        "activations, as the QLoRA paper does; peak RSS is each run's own process."
    )
    report.table(
        ["run", "test accuracy", "trainable", "train time", "peak RSS"],
        _finetune_rows(plan, runs),
        "LoRA against QLoRA",
    )
    results = {"errors": errors, "perplexity": ppl, "finetune": runs, "optimizers": curves}
    atomic_write_json(out_dir / "results.json", results)
    return report
