"""Sentence embeddings for similarity-based demonstration selection (all-MiniLM-L6-v2).

Sentence-BERT pooling (Reimers & Gurevych, 2019) over a MiniLM encoder (Wang et al., 2020):

    texts ─► WordPiece ─► BERT (6 layers, 384 wide) ─► last hidden state (B, T, 384)
          ─► mean over the real tokens (attention mask) ─► L2-normalise ─► (B, 384)

so the dot product of two embeddings is their cosine similarity. The encoder is the
embedded asset, loaded with transformers' AutoModel/AutoTokenizer from its folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.assets import asset_path


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the hidden states (B, T, D) over the positions where mask (B, T) is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    total = (hidden * weights).sum(dim=1)  # (B, D)
    return total / weights.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder:
    """texts → (N, D) unit vectors; callable, so it plugs into SelectionConfig.embed."""

    def __init__(
        self, path: str | Path | None = None, max_length: int = 128, batch_size: int = 32
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else asset_path("all-minilm-l6-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (B, T, D)
            pooled = mean_pool(hidden, batch["attention_mask"])  # (B, D)
            chunks.append(F.normalize(pooled.float(), dim=-1))
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)  # (N, D)
