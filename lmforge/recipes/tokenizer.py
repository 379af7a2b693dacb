"""`lmforge tokenizer train`: a byte-level BPE learnt from corpora, files, folders or JSONL.

With `--held_out 0.05` the last 5% of each input's documents are kept out of training and
the report measures the new tokenizer on them beside the `--compare` tokenizers (a model
name such as smollm2-135m-instruct, or a tokenizer.json path):

    lmforge tokenizer train peoples-daily --held_out 0.05 --compare smollm2-135m-instruct
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.config import arg
from lmforge.data import load_corpus
from lmforge.errors import ConfigError
from lmforge.hub import load_tokenizer
from lmforge.tokenizer import Tokenizer, characters_per_token, split_characters


@dataclass
class TokenizerTrainConfig:
    inputs: list[str] = arg(factory=list, positional=True)  # corpus names, files, folders, .jsonl
    vocab_size: int = 8192  # entries of the vocabulary, special tokens included
    out: str = "tokenizer.json"  # where to write tokenizer.json
    skip_bad: bool = False  # skip (and count) undecodable files and malformed lines
    held_out: float = 0.0  # share of each input's documents (the last) kept out to measure on
    compare: list[str] = arg(factory=list)  # tokenizers measured beside (model names or paths)


def train_tokenizer(cfg: TokenizerTrainConfig) -> Tokenizer:
    """Train on every document of every input (in order), save to `cfg.out`, report."""
    if not 0.0 <= cfg.held_out < 1.0:
        raise ConfigError(f"held_out={cfg.held_out} must be in [0, 1); try --held_out 0.05")
    train, held = [], []
    for source in cfg.inputs:
        texts = [d.text for d in load_corpus(source, skip_bad=cfg.skip_bad)]
        cut = len(texts) - int(len(texts) * cfg.held_out)
        train, held = train + texts[:cut], held + texts[cut:]
    tokenizer = Tokenizer.train(train, vocab_size=cfg.vocab_size, show_progress=True)
    tokenizer.save(Path(cfg.out))
    print(f"wrote {cfg.out}: {tokenizer.vocab_size} tokens")
    text = "\n".join(held) if held else train[0][:2000]
    where = f"{len(held)} held-out documents" if held else "the first training document"
    for row in compression_table({cfg.out: tokenizer, **_others(cfg.compare)}, text, where):
        print(row)
    return tokenizer


def _others(names: list[str]) -> dict[str, Tokenizer]:
    return {name: load_tokenizer(name) for name in names}


def compression_table(tokenizers: dict[str, Tokenizer], text: str, where: str) -> list[str]:
    """Markdown rows: characters and bytes per token and split characters, on one text."""
    rows = [
        f"measured on {where} ({len(text):,} characters)",
        "| tokenizer | vocabulary | characters / token | bytes / token | characters split |",
        "|---|---|---|---|---|",
    ]
    for name, tok in tokenizers.items():
        n = max(1, len(tok.encode(text)))
        rows.append(
            f"| {name} | {tok.vocab_size:,} | {characters_per_token(tok, text):.2f} | "
            f"{len(text.encode()) / n:.2f} | {split_characters(tok, text):.1%} |"
        )
    return rows
