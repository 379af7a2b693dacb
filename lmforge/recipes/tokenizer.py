"""`lmforge tokenizer train`: a byte-level BPE learnt from corpora, files, folders or JSONL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.config import arg
from lmforge.data import load_corpus
from lmforge.tokenizer import Tokenizer


@dataclass
class TokenizerTrainConfig:
    inputs: list[str] = arg(factory=list, positional=True)  # corpus names, files, folders, .jsonl
    vocab_size: int = 8192  # entries of the vocabulary, special tokens included
    out: str = "tokenizer.json"  # where to write tokenizer.json
    skip_bad: bool = False  # skip (and count) undecodable files and malformed lines


def train_tokenizer(cfg: TokenizerTrainConfig) -> Tokenizer:
    """Train on every document of every input (in order), save to `cfg.out`, report."""
    texts = [d.text for source in cfg.inputs for d in load_corpus(source, skip_bad=cfg.skip_bad)]
    tokenizer = Tokenizer.train(texts, vocab_size=cfg.vocab_size, show_progress=True)
    tokenizer.save(Path(cfg.out))
    sample = texts[0][:200]
    ratio = len(sample.encode()) / max(1, len(tokenizer.encode(sample)))
    print(f"wrote {cfg.out}: {tokenizer.vocab_size} tokens, ~{ratio:.1f} bytes per token")
    return tokenizer
