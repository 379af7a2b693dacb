"""`lmforge align reward|dpo|ppo|grpo|build-preferences`: align a model on the one training loop.

    load_model ─► adapter (continue an SFT delta) | delta method | full ─► the policy
      reward   preference pairs ─► RewardModel (score head) ─► Bradley–Terry ─► held-out accuracy
      dpo      preference pairs ─► DPO loss vs π_ref (live or precomputed) ─► held-out margins
      ppo      prompts ─► RolloutSource (engine, judge, GAE) ─► PPO(-ptx) on PolicyWithValue
      grpo     prompts ─► RolloutSource (k per prompt, group advantages) ─► GRPO
    ─► train() ─► delta/ or model/, heads, results.json, align.png

The reference policy is the policy as this run starts it (align/logprobs.py, `Reference`),
built before train() resumes a checkpoint, so a resumed run has the same reference.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import peft
from lmforge.align.build import BuildPreferencesConfig, build_preferences
from lmforge.align.dpo import DPOObjective, DPOSettings, precompute_reference
from lmforge.align.grpo import GRPOObjective, GRPOSettings
from lmforge.align.judges import make_judge
from lmforge.align.logprobs import Reference
from lmforge.align.ppo import PolicyWithValue, PPOObjective, PPOSettings
from lmforge.align.prompts import load_prompts
from lmforge.align.reward import RewardModel, RewardObjective, RewardSettings, pairwise_accuracy
from lmforge.align.rollout import RolloutSettings, RolloutSource, sample_replies
from lmforge.align.store import save_head, save_trained
from lmforge.atomic import atomic_write_json
from lmforge.data import PackedBatches, build_shards, load_corpus, load_shards
from lmforge.data.preferences import (
    PairBatches,
    encode_pair,
    fixed_pair_batches,
    read_preferences,
)
from lmforge.errors import ConfigError
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig
from lmforge.plots import plot_curves
from lmforge.recipes.action import Action
from lmforge.recipes.rundir import check_resume, save_config
from lmforge.registry import Registry
from lmforge.train import TrainConfig, train
from lmforge.train.validation import to_device

BUILD = "build-preferences"
CURVES = ("reward", "reward_chosen", "reward_rejected", "margin", "accuracy", "kl")


@dataclass
class AlignDataConfig:
    preferences: str = ""  # reward, dpo: preference file(s), comma-separated
    prompts: str = ""  # ppo, grpo: prompt files or sets (arithmetic-1, bbc-topic), comma-separated
    max_length: int = 512  # tokens of prompt + reply; the prompt side is cut
    holdout: int = 10  # every n-th pair or prompt is held out for evaluation (0 = none)
    max_records: int = 0  # use at most this many pairs or prompts (0 = all)
    skip_bad: bool = False  # skip malformed records (counted) instead of failing
    ptx: str = ""  # ppo: corpus of the pretraining-loss mix (PPO-ptx), e.g. shakespeare
    ptx_length: int = 128  # ppo: tokens per pretraining window
    min_gap: float = 0.0  # build-preferences: keep a pair when best − worst score exceeds this


@dataclass
class AlignConfig:
    run_dir: str = "runs/align"  # where checkpoints, metrics, the delta and results go
    method: str = "dpo"  # reward | dpo | ppo | grpo | build-preferences (set by the action)
    model: str = "smollm2-135m-instruct"  # embedded model name or transformers directory
    backend: str = "native"  # native | hf
    adapter: str = ""  # start from this trained delta (e.g. an SFT run) and keep training it
    delta_method: str = "lora"  # a delta method or "full" (every weight); unused with adapter
    delta: dict[str, Any] = field(default_factory=dict)  # the delta method's fields, e.g. {r: 8}
    delta_seed: int = 0  # seed of the delta's initial weights
    judge: str = "exact"  # ppo, grpo: a rule, python:module:function or reward:RUN_DIR
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    reward: RewardSettings = field(default_factory=RewardSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.method not in METHODS and self.method != BUILD:
            raise ConfigError(
                f"method {self.method!r} is unknown; choose {[*METHODS.names(), BUILD]}",
                fix="run one of: lmforge align reward|dpo|ppo|grpo|build-preferences",
            )
        wanted = "preferences" if self.method in ("reward", "dpo") else "prompts"
        if not getattr(self.data, wanted):
            raise ConfigError(
                f"{self.method} needs {wanted}", fix=f"give a file: {{data.{wanted}=FILE}}"
            )
        if self.method == "ppo" and self.ppo.ptx_coef and not self.data.ptx:
            raise ConfigError(
                "ppo.ptx_coef > 0 needs a pretraining corpus",
                fix="name one: {data.ptx=shakespeare}, or {ppo.ptx_coef=0}",
            )


@dataclass
class Plan:
    """What one method hands the loop, and what it keeps afterwards."""

    model: nn.Module  # what train() optimises
    data: Any  # a BatchSource
    objective: Callable
    val: list | None = None
    heads: dict[str, nn.Module] = field(default_factory=dict)  # file name → head to save
    measure: Callable[[], dict[str, Any]] | None = None  # held-out figures after training


METHODS: Registry[Callable[..., Plan]] = Registry("alignment method")


def policy(cfg: AlignConfig) -> tuple[nn.Module, peft.DeltaMethod | None]:
    """The model to align: an adapter continued, a fresh delta, or every weight."""
    model = load_model(cfg.model, backend=cfg.backend)
    if cfg.adapter:
        delta = peft.load_adapter(cfg.adapter, model)
        return delta.model, delta
    if cfg.delta_method == "full":
        return model.requires_grad_(True), None
    if cfg.delta_method not in peft.METHODS:
        raise ConfigError(
            f"delta_method {cfg.delta_method!r} is unknown; choose full or one of "
            f"{', '.join(peft.METHODS.names())}",
            fix="{delta_method=lora}",
        )
    delta = peft.apply(model, cfg.delta_method, cfg.delta, seed=cfg.delta_seed)
    return delta.model, delta


def _split(items: list, cfg: AlignConfig) -> tuple[list, list]:
    d = cfg.data
    if d.max_records and d.max_records < len(items):
        keep = sorted(random.Random(cfg.train.seed).sample(range(len(items)), d.max_records))
        items = [items[i] for i in keep]
    held = [x for i, x in enumerate(items) if d.holdout and i % d.holdout == 0]
    rest = [x for i, x in enumerate(items) if not (d.holdout and i % d.holdout == 0)]
    return rest, held


def _pairs(cfg: AlignConfig, tokenizer, results: dict[str, Any]):
    records = read_preferences(cfg.data.preferences.split(","), skip_bad=cfg.data.skip_bad)
    train_pairs, held = _split(records.items, cfg)
    encode = [encode_pair(p, tokenizer, max_length=cfg.data.max_length) for p in train_pairs]
    held_encoded = [encode_pair(p, tokenizer, max_length=cfg.data.max_length) for p in held]
    results.update(pairs=len(records), skipped=len(records.skipped), held_out_records=len(held))
    pad = tokenizer.pad_id or 0
    data = PairBatches(encode, cfg.train.batch_size, pad, seed=cfg.train.seed)
    val = fixed_pair_batches(held_encoded, cfg.train.batch_size, pad) or None
    return data, val, held_encoded


@METHODS.register("reward")
def _reward(cfg: AlignConfig, lm: nn.Module, tokenizer, results: dict[str, Any]) -> Plan:
    data, val, _ = _pairs(cfg, tokenizer, results)
    model = RewardModel(lm, seed=cfg.reward.head_seed)
    measure = (lambda: pairwise_accuracy(model, val)) if val else None
    return Plan(model, data, RewardObjective(cfg.reward), val, {"score": model.score}, measure)


@METHODS.register("dpo")
def _dpo(cfg: AlignConfig, lm: nn.Module, tokenizer, results: dict[str, Any]) -> Plan:
    data, val, held = _pairs(cfg, tokenizer, results)
    reference = None
    if cfg.dpo.reference == "precomputed":  # before training: no copy of the weights kept
        pad, bs = tokenizer.pad_id or 0, cfg.train.batch_size
        data.reference = precompute_reference(lm, data.pairs, pad, bs, progress=True)
        table = precompute_reference(lm, held, pad, bs) if held else None
        for j, batch in enumerate(val or []):
            rows = table[j * bs : (j + 1) * bs]
            batch["ref_logps"] = torch.cat([rows[:, 0], rows[:, 1]])
    else:
        reference = Reference(lm)
    objective = DPOObjective(cfg.dpo, reference)
    measure = (lambda: _held_out_metrics(lm, objective, val)) if val else None
    return Plan(lm, data, objective, val, measure=measure)


@torch.no_grad()
def _held_out_metrics(model: nn.Module, objective, batches: list) -> dict[str, float]:
    """The loss and the objective's figures averaged over the held-out batches."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for batch in batches:
            loss = objective(model, to_device(batch, device))
            for k, v in {"loss": float(loss), **objective.step_metrics}.items():
                sums[k] = sums.get(k, 0.0) + v / len(batches)
    finally:
        model.train(was_training)
    return sums


def _prompts(cfg: AlignConfig):
    return _split(load_prompts(cfg.data.prompts, skip_bad=cfg.data.skip_bad), cfg)


def _rollouts(cfg: AlignConfig, model, generator, method, tokenizer, prompts, ptx=None):
    judge = make_judge(cfg.judge, tokenizer, cfg.data.max_length)
    return RolloutSource(
        model,
        method,
        prompts,
        tokenizer,
        judge,
        cfg.rollout,
        cfg.train.batch_size,
        seed=cfg.train.seed,
        generator=generator,
        pretraining=ptx,
    )


def held_out_score(lm, tokenizer, judge_spec: str, prompts, cfg: AlignConfig) -> dict[str, float]:
    """Mean judge score of greedy replies to `prompts`."""
    judge = make_judge(judge_spec, tokenizer, cfg.data.max_length)
    sampling = SamplingConfig(max_new_tokens=cfg.rollout.max_new_tokens, temperature=0.0)
    scores = []
    for i in range(0, len(prompts), 16):
        sampled = sample_replies(lm, tokenizer, prompts[i : i + 16], 1, sampling)
        scores += judge([s.prompt for s in sampled], [s.text for s in sampled])
    return {"score": sum(scores) / max(1, len(scores)), "prompts": len(scores)}


@METHODS.register("grpo")
def _grpo(cfg: AlignConfig, lm: nn.Module, tokenizer, results: dict[str, Any]) -> Plan:
    prompts, held = _prompts(cfg)
    r, t = cfg.rollout, cfg.train
    updates = r.steps_per_rollout(t.batch_size, t.grad_accum)  # optimizer steps per rollout
    reference = Reference(lm) if cfg.grpo.beta else None
    objective = GRPOObjective(
        cfg.grpo, r.samples, reference, r.temperature, r.max_new_tokens, updates
    )
    data = _rollouts(cfg, lm, lm, objective, tokenizer, prompts)
    results.update(prompts=len(prompts), held_out_records=len(held))
    measure = (lambda: held_out_score(lm, tokenizer, cfg.judge, held, cfg)) if held else None
    return Plan(lm, data, objective, measure=measure)


@METHODS.register("ppo")
def _ppo(cfg: AlignConfig, lm: nn.Module, tokenizer, results: dict[str, Any]) -> Plan:
    prompts, held = _prompts(cfg)
    model = PolicyWithValue(lm)
    objective = PPOObjective(cfg.ppo, Reference(model), cfg.rollout.temperature)
    ptx = None
    if cfg.ppo.ptx_coef:
        shards = Path(cfg.run_dir) / "ptx"
        build_shards(load_corpus(cfg.data.ptx), tokenizer, shards, progress=False)
        tokens = load_shards(shards)[0]
        ptx = PackedBatches(tokens, cfg.data.ptx_length, cfg.train.batch_size, seed=cfg.train.seed)
    data = _rollouts(cfg, model, lm, objective, tokenizer, prompts, ptx)
    results.update(prompts=len(prompts), held_out_records=len(held))
    measure = (lambda: held_out_score(lm, tokenizer, cfg.judge, held, cfg)) if held else None
    return Plan(model, data, objective, heads={"value": model.value}, measure=measure)


def plot_alignment(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """The logged rewards, margins, accuracy and KL against step."""
    series = {
        name: ([r["step"] for r in history if name in r], [r[name] for r in history if name in r])
        for name in CURVES
    }
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    return plot_curves(series, path, title=title, ylabel="value")


def build_config(cfg: AlignConfig) -> BuildPreferencesConfig:
    """build-preferences with the run's model, judge, prompts and rollout sampling."""
    r = cfg.rollout
    return BuildPreferencesConfig(
        prompts=cfg.data.prompts,
        out=str(Path(cfg.run_dir) / "preferences.jsonl"),
        model=cfg.model,
        backend=cfg.backend,
        adapter=cfg.adapter,
        judge=cfg.judge,
        samples=r.samples,
        min_gap=cfg.data.min_gap,
        max_prompts=cfg.data.max_records,
        batch_size=r.prompts,
        max_prompt_length=r.max_prompt_length,
        skip_bad=cfg.data.skip_bad,
        sampling=SamplingConfig(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=cfg.train.seed,
        ),
    )


def align(cfg: AlignConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train with cfg.method, save what was trained, and write results.json (or, for
    build-preferences, write RUN_DIR/preferences.jsonl)."""
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    check_resume(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg)
    if cfg.method == BUILD:
        results = build_preferences(build_config(cfg), progress=progress)
        atomic_write_json(run_dir / "results.json", results)
        return results
    tokenizer = load_tokenizer(cfg.model)
    lm, delta = policy(cfg)
    results: dict[str, Any] = {"method": cfg.method, "delta": delta.name if delta else "full"}
    plan = METHODS.get(cfg.method)(cfg, lm, tokenizer, results)
    trainable, total = peft.count_parameters(plan.model)
    results.update(trainable=trainable, total=total)
    result = train(
        plan.model,
        plan.data,
        cfg.train,
        run_dir,
        val_data=plan.val,
        objective=plan.objective,
        progress=progress,
    )
    results.update(train_loss=result.train_loss, val_loss=result.val_loss)
    results["seconds"] = result.seconds
    last = next((r for r in reversed(result.history) if "loss" in r), {})
    results["last_step"] = {k: v for k, v in last.items() if k not in ("lr", "elapsed")}
    if plan.measure is not None:
        results["held_out"] = plan.measure()
    save_trained(lm, delta, run_dir, cfg.model, cfg.backend)
    for name, head in plan.heads.items():
        save_head(head, run_dir / f"{name}.safetensors")
    plot_alignment(result.history, run_dir / "align.png", f"{cfg.method}: {run_dir.name}")
    atomic_write_json(run_dir / "results.json", results)
    return results


def run_align(cfg: AlignConfig) -> dict[str, Any]:
    """`lmforge align ACTION`: align, then say what came out and where."""
    results = align(cfg)
    if cfg.method == BUILD:
        print(f"{results['pairs']} pairs from {results['prompts']} prompts: {results['out']}")
        return results
    held = results.get("held_out", {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in held.items() if isinstance(v, float))
    print(f"{cfg.method}: held out {shown or 'nothing'}; saved in {cfg.run_dir}")
    return results


def _action(name: str, help: str) -> Action:
    return Action(help, AlignConfig, run_align, fixed={"method": name})


# One command per action (lmforge/cli.py): `lmforge align ACTION ...`.
ACTIONS: Registry[Action] = Registry("align action")
ACTIONS.add("reward", _action("reward", "a reward model: a score head, Bradley–Terry on pairs"))
ACTIONS.add("dpo", _action("dpo", "direct preference optimisation (sigmoid, ipo, hinge, robust)"))
ACTIONS.add("ppo", _action("ppo", "PPO-RLHF: rollouts, a judge, a value head, GAE (+ ptx)"))
ACTIONS.add("grpo", _action("grpo", "GRPO: k replies per prompt, group-relative advantages"))
ACTIONS.add(BUILD, _action(BUILD, "preference pairs from sampled replies, judged"))
