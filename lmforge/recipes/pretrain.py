"""Pretraining from scratch: corpus → tokenizer → token shards → native decoder → the loop.

    corpus ─► train BPE ─► shards (memmap) ─► PackedBatches ─┐
                           ModelConfig ─► CausalLM ──────────┴─► train() ─► model/
    train.objective ─► the loss (its special tokens join the tokenizer first)
    grow.at ─► stages: a smaller model first, grown in place of a checkpoint (train/stages.py)

Everything lands in one run directory: config.yaml (the fully resolved config,
enough to reproduce the run; rerunning it resumes), tokenizer.json, data/, checkpoints/,
metrics.jsonl, loss.png and, at the end, model/ — a transformers-format directory that
`lmforge generate`, `lmforge.load_model` and `AutoModelForCausalLM` all load. A resume is
refused if it would change what the run computes (recipes/rundir.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_write_json
from lmforge.config import apply_overrides, from_dict, read_yaml
from lmforge.data import PackedBatches, ValidationBatches, build_shards, load_corpus, load_shards
from lmforge.data.shards import RESUME_FIX, source_fingerprint
from lmforge.errors import ConfigError, DataError
from lmforge.hub import load_tokenizer
from lmforge.model import CausalLM, ModelConfig
from lmforge.model.config import PRESETS
from lmforge.model.hf import save_hf_dir
from lmforge.recipes.rundir import check_resume, save_config
from lmforge.tokenizer import Tokenizer
from lmforge.train import (
    Objective,
    TrainConfig,
    TrainResult,
    build_objective,
    objective_tokens,
    train,
)
from lmforge.train.distributed import Dist, consolidated
from lmforge.train.distributed import setup as setup_distributed
from lmforge.train.growth import GrowthConfig, stage_shapes
from lmforge.train.stages import train_in_stages


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
    path: str | None = None  # a tokenizer.json, model directory or embedded model; unset = train
    vocab_size: int = 2048  # vocabulary of the trained BPE (ignored with path)


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain"  # where everything of this run is written
    nproc: int = 1  # processes on this machine: N > 1 runs this command under torchrun
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grow: GrowthConfig = field(default_factory=GrowthConfig)  # model growth between stages
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
    """Defaults ← YAML file ← dotted overrides (`model.preset` too), checked field by field."""
    raw = read_yaml(path) if path else {}
    try:
        return resolve_config(apply_overrides(raw, overrides, PretrainConfig))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.message}" if path else e.message, fix=e.fix) from None


TOKENIZER_SOURCE = "tokenizer.source.json"  # what the run's own tokenizer was trained on


def prepare_tokenizer(
    cfg: PretrainConfig, documents: list[str], run_dir: Path, resumes: bool
) -> Tokenizer:
    """The given tokenizer, or the run's own BPE: reused when it was trained on these
    documents with this vocabulary size, else trained afresh (a resumed run must reuse it)."""
    if cfg.tokenizer.path:  # (a teacher's, for knowledge inheritance: the same vocabulary)
        return load_tokenizer(cfg.tokenizer.path)
    cached, source = run_dir / "tokenizer.json", run_dir / TOKENIZER_SOURCE
    made_from = {"vocab_size": cfg.tokenizer.vocab_size, "corpus": source_fingerprint(documents)}
    recorded = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else None
    if cached.is_file() and (recorded == made_from or (resumes and recorded is None)):
        return Tokenizer.from_file(cached)  # (a run from before sources were recorded: its own)
    if resumes:
        raise DataError(
            f"{cached} was trained on other text or another vocabulary size ({recorded} → "
            f"{made_from}); resuming with a retrained tokenizer would change every token id",
            fix=RESUME_FIX,
        )
    tokenizer = Tokenizer.train(documents, vocab_size=cfg.tokenizer.vocab_size)
    tokenizer.save(cached)
    atomic_write_json(source, made_from)
    return tokenizer


def _prepare_data(
    cfg: PretrainConfig, run_dir: Path, resumes: bool, progress: bool
) -> tuple[Tokenizer, Path]:
    """The tokenizer and the token shards' directory (built, or reused as they are); fills in
    the vocabulary size."""
    corpus = load_corpus(cfg.data.corpus, skip_bad=cfg.data.skip_bad)
    if progress and (corpus.skipped_files or corpus.skipped_lines):
        print(corpus.summary())
    texts = list(corpus.texts())
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(cfg, texts, run_dir, resumes)
    shards_dir = Path(cfg.data.shards_dir) if cfg.data.shards_dir else run_dir / "data"
    # The objective's tokens (sentinels, mode tokens) come after the shards, which hold the
    # text as the plain tokenizer reads it: runs of every objective share one set of shards.
    cfg.model = cfg.model.replace(vocab_size=tokenizer.vocab_size)
    cfg.model.validate()
    stage_shapes(cfg.model, cfg.grow, cfg.train.max_steps)  # a growth that cannot work: now
    build_shards(
        corpus,
        tokenizer,
        shards_dir,
        val_fraction=cfg.data.val_fraction,
        progress=progress,
        must_reuse=resumes,
    )
    tokenizer.add_special_tokens(objective_tokens(cfg.train))
    cfg.model = cfg.model.replace(vocab_size=tokenizer.vocab_size)
    return tokenizer, shards_dir


def _check_shardable(cfg: PretrainConfig, ctx: Dist) -> None:
    """Refuse, before anything is written, what several processes do not do yet."""
    if ctx.mode != "none" and cfg.grow.enabled:
        raise ConfigError(
            "growth rebuilds the model between stages, which runs in one process only",
            fix="drop {grow.at}, or train with {distributed=none} in one process",
        )
    if ctx.mode == "fsdp" and cfg.train.objective == "multi-token":
        raise ConfigError(
            "the multi-token heads are not gathered from FSDP's shards for the export",
            fix="use {distributed=ddp}",
        )


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> tuple[TrainResult, Path]:
    """Run (or resume) a pretraining run; returns the loop's result and the saved model dir.
    A resume is checked against the run's own config before anything is written. Under
    torchrun every rank checks; rank 0 writes the tokenizer, shards and config first."""
    ctx = setup_distributed(cfg.train)  # one rank of several under torchrun, else alone
    _check_shardable(cfg, ctx)
    progress = progress and ctx.is_main
    run_dir = Path(cfg.run_dir)
    resumes = check_resume(cfg, derived=frozenset({"model.vocab_size"}))
    with ctx.main_first():  # rank 0 trains the tokenizer and builds the shards, the rest read them
        tokenizer, shards_dir = _prepare_data(cfg, run_dir, resumes, progress)
    if ctx.is_main:
        save_config(cfg)
    train_tokens, val_tokens, shards = load_shards(shards_dir)
    if progress:
        with torch.device("meta"):
            n = CausalLM(cfg.model).num_parameters()
        print(
            f"model: {n / 1e6:.2f}M parameters; data: {shards.train_tokens:,} train / "
            f"{shards.val_tokens:,} validation tokens; run: {run_dir}"
        )
    data = PackedBatches(train_tokens, cfg.data.seq_len, cfg.train.batch_size, seed=cfg.train.seed)
    val = ValidationBatches(
        val_tokens, cfg.data.seq_len, cfg.train.batch_size, max_batches=cfg.train.eval_batches
    )
    result, model = train_model(cfg, tokenizer, data, val, progress)
    model_dir = run_dir / "model"
    whole = consolidated(model, lambda: CausalLM(cfg.model), ctx)  # rank 0: every weight whole
    if whole is not None:
        save_hf_dir(whole, model_dir, tokenizer=tokenizer)
    return result, model_dir


def train_model(
    cfg: PretrainConfig,
    tokenizer: Tokenizer,
    data: PackedBatches,
    val: ValidationBatches,
    progress: bool,
) -> tuple[TrainResult, CausalLM]:
    """The model trained with the run's objective: in one piece, or in stages (grow.at)."""
    shapes = stage_shapes(cfg.model, cfg.grow, cfg.train.max_steps)

    def objective(model: CausalLM) -> Objective:
        return build_objective(cfg.train, model, tokenizer)

    if not cfg.grow.enabled:
        torch.manual_seed(cfg.train.seed)
        model = CausalLM(cfg.model)
        result = train(
            model,
            data,
            cfg.train,
            cfg.run_dir,
            val_data=val,
            objective=objective(model),
            progress=progress,
        )
        return result, model
    if cfg.train.objective == "multi-token":
        raise ConfigError(
            "growth rebuilds the model, and multi-token heads would have to grow with it",
            fix="grow with another {objective}, or drop {grow.at}",
        )
    return train_in_stages(
        shapes,
        cfg.grow,
        objective,
        data,
        cfg.train,
        Path(cfg.run_dir),
        val_data=val,
        progress=progress,
    )
