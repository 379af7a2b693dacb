"""Pretraining from scratch: corpus → tokenizer → token shards → native decoder → the loop.

    corpus ─► train BPE ─► shards (memmap) ─► PackedBatches ─┐
                           ModelConfig ─► CausalLM ──────────┴─► train() ─► model/

Everything lands in one run directory: config.yaml (the fully resolved config,
enough to reproduce the run), tokenizer.json, data/, checkpoints/, metrics.jsonl,
loss.png and, at the end, model/ — a transformers-format directory that
`lmforge generate`, `lmforge.load_model` and `AutoModelForCausalLM` all load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.config import apply_overrides, from_dict, read_yaml, save_yaml
from lmforge.errors import ConfigError
from lmforge.model import CausalLM, ModelConfig
from lmforge.model.config import PRESETS
from lmforge.train import TrainConfig, TrainResult, train
from lmforge.train.distributed import consolidated
from lmforge.train.distributed import setup as setup_distributed


@dataclass
class DataConfig:
    corpus: str = "shakespeare"  # built-in corpus name, or a text file, folder or .jsonl file
    seq_len: int = 128  # tokens per training sequence
    val_fraction: float = 0.05  # share of every document held out for validation
    skip_bad: bool = False  # skip (and count) undecodable files and malformed lines
    shards_dir: str | None = None  # where token shards go (default RUN_DIR/data); shareable

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be at least 2, got {self.seq_len}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer.json; unset = train a BPE on the corpus
    vocab_size: int = 2048  # vocabulary of the trained BPE (ignored with path)


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"  # where everything of this run is written
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample_prompt: str = ""  # text to continue after training ("" = start of a document)
    sample_tokens: int = 200  # tokens generated for the sample


def resolve_config(raw: dict[str, Any]) -> PretrainConfig:
    """Expand `model.preset` (default `small`) into the full model shape, then check all fields."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"model: expected a mapping of model fields, got {model!r}")
    preset_name = model.pop("preset", "small")
    raw["model"] = {**PRESETS.get(preset_name), **model}
    raw["model"].setdefault("vocab_size", 1)  # filled in from the tokenizer
    return from_dict(PretrainConfig, raw)


def load_config(path: str | Path | None, overrides: list[str]) -> PretrainConfig:
    raw = read_yaml(path) if path else {}
    try:
        return resolve_config(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def prepare_tokenizer(cfg: PretrainConfig, documents: list[str], run_dir: Path):
    from lmforge.tokenizer import Tokenizer

    if cfg.tokenizer.path:
        return Tokenizer.from_file(cfg.tokenizer.path)
    cached = run_dir / "tokenizer.json"
    if cached.exists():
        return Tokenizer.from_file(cached)
    tokenizer = Tokenizer.train(documents, vocab_size=cfg.tokenizer.vocab_size)
    tokenizer.save(cached)
    return tokenizer


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> tuple[TrainResult, Path]:
    """Run (or resume) a pretraining run; returns the loop's result and the saved model dir."""
    from lmforge.data import (
        PackedBatches,
        ValidationBatches,
        build_shards,
        load_corpus,
        load_shards,
    )
    from lmforge.model.hf import save_hf_dir

    ctx = setup_distributed(cfg.train)  # one rank of several under torchrun, else alone
    progress = progress and ctx.is_main
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with ctx.main_first():  # rank 0 trains the tokenizer and builds the shards, the rest read them
        corpus = load_corpus(cfg.data.corpus, skip_bad=cfg.data.skip_bad)
        if progress and (corpus.skipped_files or corpus.skipped_lines):
            print(corpus.summary())
        texts = list(corpus.texts())
        tokenizer = prepare_tokenizer(cfg, texts, run_dir)
        cfg.model = cfg.model.replace(vocab_size=tokenizer.vocab_size)
        cfg.model.validate()
        save_yaml(cfg, run_dir / "config.yaml")
        shards_dir, fraction = run_dir / "data", cfg.data.val_fraction
        build_shards(corpus, tokenizer, shards_dir, val_fraction=fraction, progress=progress)
    train_tokens, val_tokens, shards = load_shards(run_dir / "data")
    torch.manual_seed(cfg.train.seed)
    model = CausalLM(cfg.model)
    if progress:
        n = model.num_parameters()
        print(
            f"model: {n / 1e6:.2f}M parameters; data: {shards.train_tokens:,} train / "
            f"{shards.val_tokens:,} validation tokens; run: {run_dir}"
        )
    data = PackedBatches(train_tokens, cfg.data.seq_len, cfg.train.batch_size, seed=cfg.train.seed)
    val = ValidationBatches(
        val_tokens, cfg.data.seq_len, cfg.train.batch_size, max_batches=cfg.train.eval_batches
    )
    result = train(model, data, cfg.train, run_dir, val_data=val, progress=progress)
    model_dir = run_dir / "model"
    whole = consolidated(model, lambda: CausalLM(cfg.model), ctx)  # rank 0: every weight whole
    if whole is not None:
        save_hf_dir(whole, model_dir)
        tokenizer.save(model_dir / "tokenizer.json")
    return result, model_dir
