"""The alignment lab's measurements and report: judged score, win rate against the SFT model,
reward-model score, KL to the SFT model, and the alignment tax (see lab/alignment.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lmforge.align.judges import RewardJudge, make_judge
from lmforge.align.logprobs import token_logprobs
from lmforge.align.rollout import rollout_batch, sample_replies
from lmforge.align.store import load_reward_model
from lmforge.data.preferences import PromptRecord, read_prompts
from lmforge.eval import EvalSettings, evaluate
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig
from lmforge.peft import load_adapter
from lmforge.plots import plot_bars, plot_curves
from lmforge.report import Report
from lmforge.tokenizer import Tokenizer

BATCH = 8


def replies(model: nn.Module, tokenizer: Tokenizer, prompts: list, config: SamplingConfig):
    out = []
    for i in range(0, len(prompts), BATCH):
        out += sample_replies(model, tokenizer, prompts[i : i + BATCH], 1, config)
    return out


@torch.no_grad()
def kl_to(model: nn.Module, sft: nn.Module, tokenizer: Tokenizer, prompts, new: int) -> float:
    """KL(π ‖ π_SFT) over the first `new` reply tokens: the mean of Σ_t log π − log π_SFT on
    replies sampled from π (temperature 1), an unbiased Monte-Carlo estimate."""
    config = SamplingConfig(max_new_tokens=new, temperature=1.0, seed=0)
    sampled = replies(model, tokenizer, prompts, config)
    total = 0.0
    for i in range(0, len(sampled), BATCH):
        batch = rollout_batch(
            sampled[i : i + BATCH], [0.0] * len(sampled[i : i + BATCH]), tokenizer.pad_id or 0
        )
        args = batch["input_ids"], batch["attention_mask"], batch["labels"]
        total += float((token_logprobs(model, *args) - token_logprobs(sft, *args)).sum())
    return total / max(1, len(sampled))


def tax_tasks(s: dict[str, Any]) -> dict[str, tuple[str, EvalSettings, str]]:
    """The tax's measures: name → (task, settings, metric)."""
    ppl = EvalSettings.from_fields(max_tokens=s["ppl_tokens"])
    return {
        "bbc_accuracy": ("bbc-news", EvalSettings(limit=s["bbc"]), "accuracy"),
        "arithmetic": ("arithmetic-1", EvalSettings(shots=3, limit=s["arithmetic"]), "accuracy"),
        "ppl_shakespeare": ("ppl-shakespeare", ppl, "perplexity"),
        "ppl_peoples_daily": ("ppl-peoples-daily", ppl, "perplexity"),
    }


def tax(model: nn.Module, tokenizer: Tokenizer, s: dict[str, Any]) -> dict[str, float]:
    """General ability: BBC topics (zero-shot, label likelihood), 3-shot arithmetic and the
    perplexity of the first tokens of two corpora."""
    runs = tax_tasks(s)
    return {
        name: evaluate(model, tokenizer, task, settings).metrics[metric]
        for name, (task, settings, metric) in runs.items()
    }


def _wins(scores: list[float], baseline: list[float]) -> dict[str, Any]:
    wins = sum(a > b for a, b in zip(scores, baseline))
    ties = sum(a == b for a, b in zip(scores, baseline))
    losses = len(scores) - wins - ties
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": (wins + ties / 2) / max(1, len(scores)),
    }


def evaluate_models(
    adapters: dict[str, Path | None],
    test_prompts: Path,
    reward_dir: Path,
    s: dict[str, Any],
    model_name: str = "smollm2-135m-instruct",
) -> dict[str, dict[str, Any]]:
    """Every model (the SFT model, then each aligned adapter) on the held-out prompts."""
    tokenizer = load_tokenizer(model_name)
    sft = load_model(model_name)
    prompts: list[PromptRecord] = read_prompts(test_prompts).items
    judge = make_judge("exact", tokenizer)
    reward = RewardJudge(load_reward_model(reward_dir), tokenizer)
    greedy = SamplingConfig(max_new_tokens=s["new"], temperature=0.0)
    sampled = prompts[: s["kl_prompts"]]  # the KL estimate's prompts
    out: dict[str, dict[str, Any]] = {}
    baseline: list[float] = []
    for name, adapter in tqdm(adapters.items(), desc="evaluate", unit="model"):
        model = sft
        if adapter is not None:
            delta = load_adapter(adapter, load_model(model_name))
            delta.merge()
            model = delta.model.eval()
        texts = [r.text for r in replies(model, tokenizer, prompts, greedy)]
        scores = judge(prompts, texts)
        baseline = baseline or scores
        row = {
            "score": sum(scores) / len(scores),
            "exact": sum(x == 1.0 for x in scores) / len(scores),
            "reward": sum(reward(prompts, texts)) / len(texts),
            "kl": 0.0 if adapter is None else kl_to(model, sft, tokenizer, sampled, s["new"]),
            **_wins(scores, baseline),
            **tax(model, tokenizer, s),
            "examples": [
                [p.meta["answer"], " ".join(t.split())[:70]]
                for p, t in list(zip(prompts, texts))[:3]
            ],
        }
        out[name] = row
    return out


def _curves(stages_dir: Path, names: list[str]) -> dict[str, tuple[list, list]]:
    series = {}
    for name in names:
        path = stages_dir / name / "metrics.jsonl"
        if not path.is_file():
            continue
        rows = [r for r in map(json.loads, path.read_text().splitlines()) if "reward" in r]
        series[name] = ([r["step"] for r in rows], [r["reward"] for r in rows])
    return series


def verdict(evaluation: dict[str, dict[str, Any]]) -> str:
    sft = evaluation["SFT"]
    aligned = {k: v for k, v in evaluation.items() if k != "SFT"}
    raised = [k for k, v in aligned.items() if v["score"] > sft["score"]]
    missed = [k for k in aligned if k not in raised]
    best = max(aligned, key=lambda k: aligned[k]["win_rate"])
    lines = [
        f"Judged score over the SFT model's {sft['score']:.3f}: raised by "
        f"{', '.join(raised) or 'no method'}"
        + (f"; not by {', '.join(missed)}." if missed else "."),
        f"Best win rate against the SFT model: {best} with {100 * aligned[best]['win_rate']:.1f}% "
        f"(target ≥ 80%: {'met' if aligned[best]['win_rate'] >= 0.8 else 'not met'}).",
    ]
    if "PPO" in evaluation and "PPO-PTX" in evaluation:
        for corpus in ("ppl_shakespeare", "ppl_peoples_daily"):
            plain = evaluation["PPO"][corpus] - sft[corpus]
            mixed = evaluation["PPO-PTX"][corpus] - sft[corpus]
            lines.append(
                f"Tax on {corpus[4:].replace('_', ' ')} perplexity: PPO {plain:+.2f}, PPO-ptx "
                f"{mixed:+.2f} ({'ptx reduces it' if mixed < plain else 'ptx does not reduce it'})."
            )
    return "\n\n".join(lines)


HEADS = [
    "model",
    "judged score",
    "exact format",
    "win rate vs SFT",
    "W/T/L",
    "reward-model score",
    "KL to SFT",
    "BBC acc.",
    "arithmetic",
    "ppl Shakespeare",
    "ppl People's Daily",
]


def table_row(name: str, r: dict[str, Any]) -> list[Any]:
    """One model's row under HEADS."""
    return [
        name,
        r["score"],
        f"{100 * r['exact']:.0f}%",
        f"{100 * r['win_rate']:.1f}%",
        f"{r['wins']}/{r['ties']}/{r['losses']}",
        r["reward"],
        r["kl"],
        r["bbc_accuracy"],
        r["arithmetic"],
        r["ppl_shakespeare"],
        r["ppl_peoples_daily"],
    ]


def report_results(
    report: Report, s: dict[str, Any], stages: dict[str, Any], evaluation: dict[str, Any]
) -> None:
    prefs, rm = stages["preferences"], stages["reward"]
    report.text(
        f"Settings: {s['train']} training and {s['test']} test articles cut to {s['chars']} "
        f"characters; {s['k']} samples per prompt; replies of at most {s['new']} tokens; "
        f"updates: reward model {s['steps']}, DPO {s['dpo_steps']}, DPO-2 {s['dpo2_steps']}, "
        f"GRPO {s['grpo_steps']}, "
        f"PPO {s['ppo_steps']}; LoRA r=8 on every linear layer at lr {s['lr']:g}. "
        f"build-preferences made {prefs['pairs']} pairs from {prefs['prompts']} prompts "
        f"(mean judged score of the samples {prefs['mean_score']:.3f})."
    )
    rows = [table_row(name, r) for name, r in evaluation.items()]
    report.table(HEADS, rows, "Held-out test articles (greedy replies)")
    report.text(verdict(evaluation))
    held = rm.get("last_step", {})
    report.text(
        f"Reward model: last training step accuracy {held.get('accuracy', float('nan')):.2f}; "
        f"train loss {rm.get('train_loss', float('nan')):.4f}."
    )
    wins = {name: 100 * r["win_rate"] for name, r in evaluation.items() if name != "SFT"}
    plot_bars(
        wins,
        report.figure("win_rate.png", "Win rate against the SFT model (%)"),
        ylabel="%",
        reference=80,
        reference_label="target",
    )
    curves = _curves(report.out_dir, ["grpo", "dpo-grpo", "ppo", "ppo-ptx"])
    if curves:
        plot_curves(
            curves,
            report.figure("rewards.png", "Rollout reward during training"),
            ylabel="mean reward",
        )
    samples = [[name, *x] for name, r in evaluation.items() for x in r["examples"][:2]]
    report.table(["model", "topic", "reply"], samples, "Replies to the first test articles")
