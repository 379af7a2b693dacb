"""Build preference pairs from a policy's own replies: sample, judge, keep best against worst.

    prompts ─► k replies each from the policy (the engine: batched, KV-cached, seeded)
            ─► a score per reply (a rule, your Python function or a reward model)
            ─► the best and the worst reply of each prompt become one pair
               (kept when their scores differ by more than min_gap and their texts differ)
            ─► a preference file, each pair's meta holding both scores and the prompt's origin

A prompt record may carry a `reference` reply (a demonstration): it is judged with the
samples and competes for the chosen side only, so a policy that never produces the wanted
behaviour still gets pairs that show it (demonstration ≻ the policy's worst reply).

This is how preference data is made without human raters when a program can judge the
behaviour (an exact answer, a requested format), and how a reward model labels new data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from lmforge.align.judges import Judge, make_judge
from lmforge.align.prompts import load_prompts
from lmforge.align.rollout import sample_replies
from lmforge.data.preferences import PreferencePair, PromptRecord, write_preferences
from lmforge.errors import ConfigError
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig
from lmforge.peft import load_adapter
from lmforge.tokenizer import Tokenizer


@dataclass
class BuildPreferencesConfig:
    prompts: str = ""  # prompt files or sets (bbc-topic, arithmetic-1), comma-separated
    out: str = "runs/preferences.jsonl"  # the pairs (.jsonl or .json)
    model: str = "smollm2-135m-instruct"  # the policy that answers: embedded name or directory
    backend: str = "native"  # native | hf
    adapter: str = ""  # a trained delta to sample from (a finetune or align run directory)
    judge: str = "exact"  # a rule, python:package.module:function or reward:RUN_DIR
    samples: int = 4  # replies sampled per prompt
    min_gap: float = 0.0  # keep a pair only when best − worst score exceeds this
    max_prompts: int = 0  # answer at most this many prompts (0 = all)
    batch_size: int = 8  # prompts per generation batch
    max_prompt_length: int = 256  # a longer prompt keeps its last tokens
    skip_bad: bool = False  # skip malformed prompt records (counted) instead of failing
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=1.0, seed=0)
    )

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("build-preferences needs --prompts=FILE (records with a prompt)")
        if self.samples < 2:
            raise ConfigError(f"samples must be at least 2 to compare replies, got {self.samples}")
        if self.sampling.temperature == 0:
            raise ConfigError("sampling.temperature 0 gives k identical replies; sample above 0")


def best_and_worst(
    prompt: PromptRecord,
    replies: list[str],
    scores: list[float],
    min_gap: float,
    sampled: int | None = None,
) -> PreferencePair | None:
    """The pair (best reply, worst reply) of one prompt, or None if they do not differ enough.
    Only the first `sampled` replies (default all) may be the worst; those after them are
    references. Ties go to the earlier reply, so the result depends only on the inputs."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(sampled or len(scores)), key=lambda i: (scores[i], i))
    if scores[best] - scores[worst] <= min_gap or replies[best] == replies[worst]:
        return None
    if not replies[best].strip() or not replies[worst].strip():
        return None
    meta = {
        **{k: v for k, v in prompt.meta.items() if k not in ("origin", "reference")},
        "prompt_origin": prompt.meta.get("origin", ""),
        "chosen_score": scores[best],
        "rejected_score": scores[worst],
    }
    return PreferencePair(prompt.messages, replies[best], replies[worst], meta)


def build_pairs(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: list[PromptRecord],
    judge: Judge,
    cfg: BuildPreferencesConfig,
    progress: bool = True,
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Pairs from `prompts`, and counts (prompts, replies, pairs, mean score)."""
    pairs, all_scores = [], []
    k, bs = cfg.samples, cfg.batch_size
    for i in tqdm(range(0, len(prompts), bs), desc="build-preferences", disable=not progress):
        chunk = prompts[i : i + bs]
        seed = None if cfg.sampling.seed is None else cfg.sampling.seed + i
        sampling = dataclasses.replace(cfg.sampling, seed=seed)
        sampled = sample_replies(model, tokenizer, chunk, k, sampling, cfg.max_prompt_length)
        scores = judge([s.prompt for s in sampled], [s.text for s in sampled])
        all_scores += scores
        refs = [p for p in chunk if "reference" in p.meta]
        ref_scores = iter(judge(refs, [str(p.meta["reference"]) for p in refs]))
        for j, prompt in enumerate(chunk):
            texts = [s.text for s in sampled[j * k : (j + 1) * k]]
            marks = scores[j * k : (j + 1) * k]
            if "reference" in prompt.meta:
                texts, marks = texts + [str(prompt.meta["reference"])], marks + [next(ref_scores)]
            pair = best_and_worst(prompt, texts, marks, cfg.min_gap, sampled=k)
            if pair is not None:
                pairs.append(pair)
    counts = {
        "prompts": len(prompts),
        "replies": len(all_scores),
        "pairs": len(pairs),
        "mean_score": sum(all_scores) / max(1, len(all_scores)),
    }
    return pairs, counts


def build_preferences(cfg: BuildPreferencesConfig, progress: bool = True) -> dict[str, Any]:
    """Read the prompts, load the policy (and adapter), build and write the pairs."""
    cfg.validate()
    cfg.sampling.validate()
    prompts = load_prompts(cfg.prompts, skip_bad=cfg.skip_bad)[: cfg.max_prompts or None]
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, backend=cfg.backend)
    if cfg.adapter:
        model = load_adapter(cfg.adapter, model).model
    judge = make_judge(cfg.judge, tokenizer)
    pairs, counts = build_pairs(model.eval(), tokenizer, prompts, judge, cfg, progress)
    if not pairs:
        raise ConfigError(
            f"no prompt gave replies whose scores differ by more than min_gap={cfg.min_gap}; "
            "sample more replies (--samples), raise --sampling.temperature or lower --min_gap"
        )
    write_preferences(pairs, Path(cfg.out))
    return {**counts, "out": cfg.out}
