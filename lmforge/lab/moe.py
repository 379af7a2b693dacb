"""Sparse experts: mixtures of experts against the dense model with the same parameters per
token.

The claim (Fedus et al., 2021, Switch Transformer; Lepikhin et al., 2020): replacing the FFN
by many experts and sending each token to a few of them multiplies the parameters while
keeping the computation per token, and the larger model learns faster: lower loss at equal
steps, and the dense quality up to 7x sooner at scale. The cost is routing (the router,
sorting tokens to experts, capacity padding) and balance: the load balancing loss keeps the
experts equally used, and tokens over an expert's capacity are dropped (they pass on
through the residual connection).

Four runs on Shakespeare from the same tokenizer, data and seed: the dense model; a
fine-grained MoE (2E experts of half the dense FFN's width, top-2 with the two weights
renormalised, dropless: Mixtral's and DeepSeekMoE's routing, the same FFN width per token);
a Switch MoE (E experts of the dense width, top-1, capacity factor 1.25); both with balance
loss 0.01 and z-loss 0.001; and the dense model for as many more steps as the fine-grained
MoE's training time buys (equal wall-clock).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmforge.lab.base import experiment
from lmforge.lab.runs import curve, history, step_seconds, train_run
from lmforge.model import CausalLM, preset
from lmforge.model.hf import load_hf_dir
from lmforge.model.moe import MoE
from lmforge.plots import plot_curves
from lmforge.report import Report


def active_parameters(model: CausalLM) -> int:
    """Parameters a token meets: all but those of the experts it is not sent to."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    experts = sum(p.numel() for m in layers for p in m.experts.parameters())
    return model.num_parameters() - experts + sum(m.active_expert_parameters() for m in layers)


def settings(quick: bool) -> dict:
    steps = 20 if quick else 600
    return dict(steps=steps, experts=4 if quick else 8, eval_every=max(5, steps // 6))


def mixtures(quick: bool, experts: int) -> dict[str, dict]:
    """The two MoE models: fine-grained top-2 ("moe") and Switch top-1, at the dense width."""
    half = preset("tiny" if quick else "small").d_ff // 2
    fine = dict(n_experts=2 * experts, d_ff_expert=half, top_k=2, norm_topk_prob=True)
    return {
        "moe": dict(ffn="moe", dropless=True, **fine),
        "switch top-1": dict(ffn="moe", n_experts=experts, top_k=1, capacity_factor=1.25),
    }


def run_all(out_dir: Path, quick: bool) -> dict:
    s = settings(quick)
    train = dict(max_steps=s["steps"], eval_every=s["eval_every"])
    runs = {"dense": train_run(out_dir, "dense", {}, train, quick)}
    for name, model in mixtures(quick, s["experts"]).items():
        runs[name] = train_run(out_dir, name.split()[0], model, train, quick)
    tokens = runs["dense"][0].tokens // s["steps"]
    seconds = {name: step_seconds(result, tokens) for name, (result, _) in runs.items()}
    long_steps = round(s["steps"] * seconds["moe"] / seconds["dense"])
    long_train = dict(max_steps=long_steps, eval_every=max(5, long_steps // 6))
    runs["dense, equal time"] = train_run(out_dir, "dense-long", {}, long_train, quick)
    seconds["dense, equal time"] = step_seconds(runs["dense, equal time"][0], tokens)
    results = {}
    for name, (result, model_dir) in runs.items():
        model = load_hf_dir(model_dir)
        results[name] = dict(
            steps=result.step,
            val_loss=result.val_loss,
            tokens_per_s=result.tokens_per_s,
            ms_per_step=1000 * seconds[name],
            parameters=model.num_parameters(),
            active=active_parameters(model),
            run_dir=str(result.run_dir),
        )
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def balance(run_dir: Path) -> dict:
    """An MoE run's last expert shares, the spread of its experts, its mean drop rate."""
    records = [r for r in history(run_dir) if "expert_share" in r]
    share = records[-1]["expert_share"]
    drops = [r["drop_rate"] for r in records]
    return dict(
        share=share, spread=max(share) / max(min(share), 1e-9), drop=sum(drops) / len(drops)
    )


def verdict(results: dict, balances: dict) -> str:
    dense, moe, long = results["dense"], results["moe"], results["dense, equal time"]
    switch = results["switch top-1"]
    gap = dense["val_loss"] - moe["val_loss"]
    cost = moe["ms_per_step"] / dense["ms_per_step"]
    text = (
        f"At equal steps the fine-grained top-2 MoE's validation loss was {moe['val_loss']:.3f} "
        f"against the dense model's {dense['val_loss']:.3f} ({'lower' if gap > 0 else 'higher'}"
        f" by {abs(gap):.3f}; target: lower — {'met' if gap > 0 else 'not met'}), with "
        f"{moe['parameters'] / dense['parameters']:.1f}x the parameters and "
        f"{moe['active'] / dense['active']:.3f}x the parameters per token; the Switch top-1 MoE "
        f"reached {switch['val_loss']:.3f} ({switch['parameters'] / dense['parameters']:.1f}x "
        f"the parameters). A top-2 step cost {cost:.2f}x the dense step "
        f"({moe['ms_per_step']:.0f} vs {dense['ms_per_step']:.0f} ms; Switch "
        f"{switch['ms_per_step'] / dense['ms_per_step']:.2f}x): the router, the sort into "
        "expert buffers and three batched expert matmuls instead of three plain ones. Given the "
        f"top-2 MoE's training time ({long['steps']} steps), the dense model reached "
        f"{long['val_loss']:.3f}, "
    )
    text += "so at equal wall-clock the MoE was " + (
        "still ahead."
        if moe["val_loss"] < long["val_loss"]
        else "behind: on this CPU the "
        "step cost outweighs the per-step gain (Switch's speed-up is measured on accelerators "
        "where expert matmuls run in parallel at full efficiency)."
    )
    spread = ", ".join(
        f"{name} {b['spread']:.2f} ({100 * b['drop']:.1f}% of assignments dropped)"
        for name, b in balances.items()
    )
    return text + (
        " Expert use, busiest over idlest expert at the end (balanced = 1): " + spread + "."
    )


@experiment("moe", "Sparse experts lower the loss at equal compute per token.", minutes=30)
def run(out_dir: Path, quick: bool) -> Report:
    results = run_all(out_dir, quick)
    balances = {n: balance(Path(results[n]["run_dir"])) for n in ("moe", "switch top-1")}
    report = Report("Mixture of experts vs dense", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    rows = [
        [name, f"{r['parameters']:,}", f"{r['active']:,}", r["steps"]]
        + [f"{r['ms_per_step']:.0f}", f"{r['tokens_per_s']:,.0f}", f"{r['val_loss']:.3f}"]
        for name, r in results.items()
    ]
    headers = ["run", "parameters", "per token", "steps", "ms/step", "tokens/s", "val loss"]
    report.table(headers, rows, "Final validation loss (lower is better)")
    report.text(verdict(results, balances))
    curves = {name: curve(history(Path(r["run_dir"])), "val_loss") for name, r in results.items()}
    figure = report.figure("moe-val-steps.png", "Validation loss against steps")
    plot_curves(curves, figure, title="Dense vs MoE", ylabel="validation loss")
    timed = {
        name: ([x * r["ms_per_step"] / 1000 for x in xs], ys)
        for (name, (xs, ys)), r in zip(curves.items(), results.values())
    }
    figure = report.figure("moe-val-time.png", "Validation loss against training seconds")
    labels = dict(xlabel="training seconds", ylabel="validation loss")
    plot_curves(timed, figure, title="Equal wall-clock", **labels)
    for name, file in (("moe", "moe-experts.png"), ("switch top-1", "moe-switch-experts.png")):
        experts = Path(results[name]["run_dir"]) / "experts.png"
        shutil.copyfile(experts, report.figure(file, f"Expert shares and drop rate: {name}"))
    return report
