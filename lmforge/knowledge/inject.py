"""Parameter-level knowledge: train the documents into the model, then ask it closed-book.

    documents ─► token stream (EOS between documents) ─► PackedBatches (B, T)
              ─► [delta method: lora, knowledge (module.py), adapter, ... | full weights]
              ─► the one training loop, next-token loss (continued pretraining)
              ─► closed-book answers on the same questions: accuracy before vs after

Continued pretraining on the documents themselves is the simplest injection; a delta method
keeps the base frozen, so the injected knowledge is a file that can be loaded or dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from lmforge.data.loader import PackedBatches
from lmforge.errors import ConfigError
from lmforge.eval.ppl import token_stream
from lmforge.peft import DeltaMethod, apply
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.loop import train
from lmforge.train.state import TrainResult


@dataclass
class InjectionConfig:
    method: str = "lora"  # a delta method (lora, knowledge, adapter, ...) or full (all weights)
    delta: dict = field(default_factory=dict)  # the method's config fields, e.g. {r: 16}
    steps: int = 200  # optimizer updates
    batch_size: int = 4  # sequences per update
    seq_len: int = 256  # tokens per sequence
    lr: float = 3e-4  # peak learning rate (cosine decay, 10% warmup)
    seed: int = 0  # data order and initialisation


@dataclass
class Injection:
    model: nn.Module  # the model to call now (the delta's wrapped model, or the tuned one)
    delta: DeltaMethod | None  # None for full tuning
    result: TrainResult  # losses of the run


def inject_knowledge(
    model: nn.Module,
    tokenizer: Tokenizer,
    texts: Iterable[str],
    config: InjectionConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
) -> Injection:
    """Continue pretraining `model` on `texts` (through a delta method unless full)."""
    tokens = np.asarray(token_stream(tokenizer, texts), dtype=np.int64)
    if len(tokens) < config.batch_size * config.seq_len:
        raise ConfigError(
            f"the documents hold {len(tokens)} tokens, fewer than one batch of "
            f"{config.batch_size} × {config.seq_len}; lower seq_len or batch_size"
        )
    delta = None
    if config.method != "full":
        delta = apply(model, config.method, config.delta, seed=config.seed)
        model = delta.model
    data = PackedBatches(tokens, config.seq_len, config.batch_size, seed=config.seed)
    warmup = max(1, config.steps // 10)
    train_config = TrainConfig(
        max_steps=config.steps, batch_size=config.batch_size, lr=config.lr, warmup_steps=warmup,
        eval_every=0, save_every=0, log_every=max(1, config.steps // 20), seed=config.seed,
        weight_decay=0.0 if delta is not None else 0.1,
    )  # fmt: skip
    model.train()
    result = train(model, data, train_config, run_dir, progress=progress)  # resumes a rerun
    model.eval()
    return Injection(model, delta, result)
