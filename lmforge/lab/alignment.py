"""Alignment raises a behaviour people (here: a program) prefer, at a measurable cost.

InstructGPT (Ouyang et al., 2022) aligns a supervised model with human preferences through a
reward model and PPO; DPO and GRPO reach the same objective without a separate reward model
or without a value model; aligning can cost general ability (the "alignment tax"), which
PPO-ptx reduces by keeping the pretraining loss in the objective. At our scale, with a
behaviour a program can judge so that no human rater is needed:

    helpful   asked for the topic of a BBC News article "with one word", the reply is
              exactly the right topic (1), names it among other words but no other topic
              (½), or misses or names several topics (0)

    SFT model   SmolLM2-135M-Instruct as released (instruction-tuned by its authors)
    preferences 4 sampled replies per training article and the label as a demonstration, judged;
                best vs worst (build-preferences: the demonstration is never the worse side)
    reward      LoRA + a score head, Bradley–Terry on those pairs
    DPO         LoRA, on the same pairs
    DPO-2       a second round (iterative DPO): 4 replies per training article sampled from
                the DPO model and judged, best vs worst, DPO continued on them (π_ref: the
                DPO model)
    GRPO        LoRA, 4 samples per prompt, the judge as a verifiable reward
    DPO-GRPO    the same GRPO run started from the DPO model instead (π_ref: the DPO model)
    PPO         LoRA + value head, the reward model's score, per-token KL to the SFT model
    PPO-ptx     the same with a pretraining loss on held-apart Shakespeare and People's Daily

Every model answers the same held-out test articles greedily. Reported: the judged score,
the win rate against the SFT model's reply to the same article (ties count half), the reward
model's score, KL(π ‖ π_SFT) estimated on sampled replies, and the tax: zero-shot BBC topic
accuracy (label likelihood), 3-shot arithmetic, and perplexity on the first tokens of
Shakespeare and People's Daily (PPO-ptx trains on other works and later lines).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.align.prompts import topic_prompts
from lmforge.atomic import atomic_write_json
from lmforge.config import from_dict
from lmforge.data import load_corpus
from lmforge.lab.alignment_eval import evaluate_models, report_results
from lmforge.lab.base import experiment
from lmforge.lab.peft_compare import verb_child
from lmforge.recipes.align import AlignConfig
from lmforge.report import Report

MODEL = "smollm2-135m-instruct"
METHODS = ("dpo", "dpo-2", "grpo", "dpo-grpo", "ppo", "ppo-ptx")


SIZES = {  # name: (quick, full)
    "train": (4, 96),  # training articles (prompts of build-preferences, GRPO and PPO)
    "test": (4, 40),  # held-out test articles every model answers
    "chars": (120, 300),  # characters of each article in the prompt
    "k": (2, 4),  # replies sampled per prompt (build-preferences, GRPO)
    "new": (4, 24),  # longest reply, in tokens
    "steps": (1, 24),  # updates of the reward model
    "dpo_steps": (1, 72),  # DPO updates (three passes over the pairs)
    "dpo2_steps": (1, 48),  # DPO-2 updates (two passes over its on-policy pairs)
    "grpo_steps": (1, 16),  # GRPO updates (one rollout each)
    "ppo_steps": (2, 24),  # PPO updates (two per rollout)
    "pairs_batch": (1, 4),  # preference pairs per batch
    "rollout_prompts": (2, 4),  # prompts per GRPO rollout (PPO: twice as many, one reply each)
    "lr": (5e-4, 5e-4),  # LoRA learning rate
    "bbc": (4, 60),  # BBC test articles in the tax's topic accuracy
    "arithmetic": (2, 24),  # problems in the tax's 3-shot arithmetic
    "ppl_tokens": (64, 1024),  # tokens of each corpus in the tax's perplexity
    "kl_prompts": (2, 24),  # test prompts sampled for the KL estimate
    "ptx_docs": (1, 6),  # Shakespeare works (and 40× as many People's Daily lines) for ptx
    "ptx_length": (32, 128),  # tokens per PPO-ptx window
}


def settings(quick: bool) -> dict[str, Any]:
    """Sizes of every stage (SIZES); `quick` is a smoke run."""
    return {name: sizes[0 if quick else 1] for name, sizes in SIZES.items()}


def write_prompts(out_dir: Path, s: dict[str, Any]) -> tuple[Path, Path]:
    """A seeded sample of the bbc-topic prompts (train split) and of bbc-topic-test."""
    paths = []
    for split, n, seed in (("train", s["train"], 0), ("test", s["test"], 1)):
        picked = random.Random(seed).sample(topic_prompts(split, s["chars"]), n)
        records = [{"messages": p.messages, **p.meta} for p in picked]
        path = out_dir / f"prompts-{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        paths.append(path)
    return paths[0], paths[1]


def write_ptx(out_dir: Path, s: dict[str, Any]) -> Path:
    """PPO-ptx's text: the last Shakespeare works and the last People's Daily lines, so the
    perplexity measured on the first tokens of each corpus stays held out."""
    folder = out_dir / "ptx"
    folder.mkdir(parents=True, exist_ok=True)
    works = list(load_corpus("shakespeare").texts())[-s["ptx_docs"] :]
    lines = list(load_corpus("peoples-daily").texts())[-40 * s["ptx_docs"] :]
    (folder / "shakespeare.txt").write_text("\n\n".join(works), encoding="utf-8")
    (folder / "peoples-daily.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def _config(out_dir: Path, name: str, s: dict[str, Any], fields: dict[str, Any]) -> AlignConfig:
    steps = fields.get("train", {}).get("max_steps", s["steps"])
    base = {
        "run_dir": str(out_dir / name),
        "model": MODEL,
        "delta": {"r": 8, "alpha": 16, "targets": "all-linear"},
        "data": {"holdout": 0, "max_length": 384},
        "rollout": {"max_new_tokens": s["new"], "samples": s["k"], "temperature": 1.0},
        "train": {
            "max_steps": steps,
            "batch_size": s["pairs_batch"],
            "lr": s["lr"],
            "warmup_steps": max(1, steps // 8),
            "weight_decay": 0.0,
            "log_every": 1,
            "save_every": steps,
            "eval_every": 0,
        },
    }
    for key, value in fields.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return from_dict(AlignConfig, base)


def stage_configs(
    out_dir: Path, s: dict[str, Any], train_prompts: Path, ptx: Path
) -> dict[str, AlignConfig]:
    """Every stage's AlignConfig, in the order they run."""
    prefs = str(out_dir / "preferences" / "preferences.jsonl")
    dpo_model = str(out_dir / "dpo")  # where the second DPO round samples and starts
    prompts, n = {"prompts": str(train_prompts)}, s["rollout_prompts"]
    ppo = {
        "method": "ppo",
        "judge": f"reward:{out_dir / 'reward'}",
        "data": prompts,
        "rollout": {"prompts": 2 * n, "samples": 1, "epochs": 2},
        "train": {"batch_size": 2 * n, "max_steps": s["ppo_steps"]},
    }
    grpo = {
        "method": "grpo",
        "data": prompts,
        "rollout": {"prompts": n},
        "grpo": {"beta": 0.04},
        "train": {"batch_size": n * s["k"] // 2, "grad_accum": 2, "max_steps": s["grpo_steps"]},
    }
    stages = {
        "preferences": {"method": "build-preferences", "data": prompts, "rollout": {"prompts": 8}},
        "reward": {"method": "reward", "data": {"preferences": prefs}},
        "dpo": {
            "method": "dpo",
            "data": {"preferences": prefs},
            "dpo": {"beta": 0.1},
            "train": {"max_steps": s["dpo_steps"]},
        },
        "preferences-2": {
            "method": "build-preferences",
            "adapter": dpo_model,
            "data": prompts,
            "rollout": {"prompts": 8},
        },
        "dpo-2": {
            "method": "dpo",
            "adapter": dpo_model,
            "data": {"preferences": str(out_dir / "preferences-2" / "preferences.jsonl")},
            "dpo": {"beta": 0.1},
            "train": {"max_steps": s["dpo2_steps"]},
        },
        "grpo": grpo,
        "dpo-grpo": {**grpo, "adapter": dpo_model},
        "ppo": ppo,
        "ppo-ptx": {
            **ppo,
            "data": {**prompts, "ptx": str(ptx), "ptx_length": s["ptx_length"]},
            "ppo": {"ptx_coef": 1.0},
        },
    }
    return {name: _config(out_dir, name, s, fields) for name, fields in stages.items()}


def inputs(cfg: AlignConfig) -> list[Path]:
    """The results of the earlier stages a stage reads — the model it starts from, its
    preference pairs, its reward-model judge — so that it runs again when one of them does."""
    judge = cfg.judge.removeprefix("reward:") if cfg.judge.startswith("reward:") else ""
    pairs = str(Path(cfg.data.preferences).parent) if cfg.data.preferences else ""
    return [Path(run) / "results.json" for run in (cfg.adapter, pairs, judge) if run]


@experiment(
    "alignment",
    "Reward modelling, DPO, GRPO and PPO raise a judged behaviour; PPO-ptx lowers the tax.",
    60,
)
def run(out_dir: Path, quick: bool) -> Report:
    s = settings(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report("Aligning SmolLM2-135M-Instruct to a judged behaviour", out_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    train_prompts, test_prompts = write_prompts(out_dir, s)
    configs = stage_configs(out_dir, s, train_prompts, write_ptx(out_dir, s))
    stages: dict[str, dict[str, Any]] = {}
    for name, cfg in tqdm(configs.items(), desc="alignment", unit="stage"):
        stages[name] = verb_child(["align", cfg.method], cfg, Path(cfg.run_dir), inputs(cfg))
        if "error" in stages[name]:
            raise RuntimeError(f"stage {name} failed: {stages[name]['error']} (see its log.txt)")
    adapters = {"SFT": None, **{m.upper(): out_dir / m for m in METHODS}}
    evaluation = evaluate_models(adapters, test_prompts, out_dir / "reward", s, MODEL)
    report_results(report, s, stages, evaluation)
    results = {"settings": s, "stages": stages, "evaluation": evaluation}
    atomic_write_json(out_dir / "results.json", results)
    return report
