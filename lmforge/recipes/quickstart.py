"""`lmforge quickstart`: a small native model learns Shakespeare in a few minutes on 2 cores.

It is `lmforge pretrain` with the settings below (mirrored in configs/quickstart.yaml),
followed by a sample and runs/quickstart/report.md. Its Chinese twin,
`lmforge quickstart --corpus peoples-daily`, learns People's Daily with the same model and
schedule, a vocabulary of 4096 (Chinese needs thousands of characters) and the prompt 中国
(configs/quickstart-peoples-daily.yaml; report in runs/quickstart-peoples-daily).

The yardstick is the corpus's unigram entropy: the loss of a model that knows token
frequencies but ignores context. Validation loss well below it means the model learnt to
use context.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from lmforge.config import apply_overrides, arg
from lmforge.data import load_shards, unigram_entropy
from lmforge.hub import load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig, generate
from lmforge.recipes.pretrain import PretrainConfig, pretrain, resolve_config
from lmforge.registry import Registry
from lmforge.report import Report
from lmforge.train import TrainResult

QUICKSTART = {
    "model": {"preset": "small", "max_seq_len": 256},
    "data": {"corpus": "shakespeare", "seq_len": 128},
    "tokenizer": {"vocab_size": 2048},
    "train": {
        "max_steps": 600,
        "batch_size": 16,
        "lr": 2.0e-3,
        "warmup_steps": 60,
        "min_lr_ratio": 0.1,
        "eval_every": 100,
        "eval_batches": 16,
        "save_every": 200,
        "log_every": 10,
    },
    "sample_prompt": "ROMEO.\n",
    "sample_tokens": 120,
}

# What each corpus changes in QUICKSTART, and the report's title.
TWINS: Registry[dict] = Registry("quickstart corpus")
TWINS.add("shakespeare", {"title": "a small decoder learns Shakespeare"})
TWINS.add(
    "peoples-daily",
    {
        "title": "a small decoder learns Chinese (People's Daily)",
        "data": {"corpus": "peoples-daily"},
        "tokenizer": {"vocab_size": 4096},
        "sample_prompt": "中国",
    },
)


def twin(corpus: str) -> dict:
    """QUICKSTART with `corpus`'s changes (the settings a YAML mirror holds)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in QUICKSTART.items()}
    for key, value in TWINS.get(corpus).items():
        if isinstance(value, dict):
            raw[key].update(value)
        elif key != "title":
            raw[key] = value
    return raw


@dataclass
class QuickstartConfig:
    out: str | None = None  # run directory (None = runs/quickstart, or runs/quickstart-CORPUS)
    steps: int | None = None  # training steps (None = 600); the schedule keeps its shape
    corpus: str = arg("shakespeare", choices=TWINS.names)  # peoples-daily: the Chinese twin


def _sample(model_dir: Path, pre: PretrainConfig) -> tuple[nn.Module, str]:
    """The trained model and its continuation of the sample prompt (seeded)."""
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    sampling = SamplingConfig(max_new_tokens=pre.sample_tokens, temperature=0.8, top_k=50, seed=0)
    ids = tokenizer.encode(pre.sample_prompt, add_special_tokens=True)
    kwargs = dict(eos_token_id=tokenizer.eos_id, decode=tokenizer.decode)
    return model, pre.sample_prompt + generate(model, [ids], sampling, **kwargs)[0].text


def quickstart(cfg: QuickstartConfig) -> Path:
    """Pretrain, sample, compare with the unigram entropy; returns report.md's path."""
    raw = twin(cfg.corpus)
    suffix = "" if cfg.corpus == "shakespeare" else f"-{cfg.corpus}"
    overrides, steps = [f"run_dir={cfg.out or 'runs/quickstart' + suffix}"], cfg.steps
    if steps:  # a shorter run keeps the same shape of schedule
        overrides += [
            f"train.max_steps={steps}",
            f"train.warmup_steps={max(1, steps // 10)}",
            f"train.eval_every={steps}",
            f"train.save_every={steps}",
        ]
    pre = resolve_config(apply_overrides(raw, overrides, PretrainConfig))
    start = time.time()
    result, model_dir = pretrain(pre)
    minutes = (time.time() - start) / 60
    train_tokens, _, _ = load_shards(pre.data.shards_dir or Path(pre.run_dir) / "data")
    entropy = unigram_entropy(np.asarray(train_tokens))

    model, sample = _sample(model_dir, pre)
    print("\n" + "─" * 60 + "\n" + sample + "\n" + "─" * 60)
    verdict = "well below" if result.val_loss < entropy - 1.0 else "not yet well below"
    print(
        f"validation loss {result.val_loss:.3f} nats vs unigram entropy {entropy:.3f} nats "
        f"({verdict}); {minutes:.1f} min"
    )

    title = TWINS.get(cfg.corpus)["title"]
    path = _report(title, pre, result, model, sample, entropy, minutes, verdict, model_dir)
    print(f"report: {path}")
    return path


def _report(
    title: str,
    pre: PretrainConfig,
    result: TrainResult,
    model: nn.Module,
    sample: str,
    entropy: float,
    minutes: float,
    verdict: str,
    model_dir: Path,
) -> Path:
    """report.md: the result table, the loss plot, the sample and how to reproduce it."""
    report = Report(f"Quickstart: {title}", pre.run_dir)
    report.text(__doc__.split("\n\n", 1)[1])
    report.table(
        ["", "value"],
        [
            ["parameters", f"{model.num_parameters() / 1e6:.2f} M"],
            ["training tokens seen", f"{result.tokens:,}"],
            ["training throughput", f"{result.tokens_per_s:,.0f} tokens/s"],
            ["wall time (all of it)", f"{minutes:.1f} min"],
            ["final validation loss", f"{result.val_loss:.3f} nats"],
            ["validation perplexity", f"{result.val_ppl:.1f}"],
            [
                "unigram entropy of the corpus",
                f"{entropy:.3f} nats (perplexity {math.exp(entropy):.0f})",
            ],
        ],
        "Result",
    )
    report.text(f"Validation loss is **{verdict}** the unigram entropy.")
    report.text("![Training and validation loss](loss.png)\n\n*Training and validation loss*")
    report.text("A sample (temperature 0.8, top-k 50, seed 0):\n\n```text\n" + sample + "\n```")
    report.text(
        f"Reproduce: `lmforge pretrain --config {pre.run_dir}/config.yaml`; continue "
        f"the text: `lmforge generate --model {model_dir} --prompt {pre.sample_prompt.strip()!r}`"
    )
    return report.write()
