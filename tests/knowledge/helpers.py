"""A tiny corpus in English and Chinese, and a counting bag-of-terms embedder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lmforge.knowledge.lexical import terms

DOCS = {
    "guide.md": (
        "# Install guide\n\nRun pip install lmforge to get the toolkit.\n"
        "The wheel needs Python 3.10 or newer.\n\n"
        "## Quick start\n\nTrain a tiny model with lmforge quickstart.\n"
    ),
    "faq.rst": (
        "FAQ\n===\n\nWhy is the sky blue?\n--------------------\n\n"
        "Rayleigh scattering makes short blue wavelengths scatter more than red ones.\n\n"
        "What is BM25?\n-------------\n\nA ranking function over term frequencies.\n"
    ),
    "zh.txt": (
        "知识库问答系统先检索相关段落。\n然后语言模型根据证据生成回答。\n长城位于中国北方。\n"
    ),
}


def write_corpus(root: Path, docs: dict[str, str] = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


class CountingEmbedder:
    """Hashed bag of index terms, L2-normalised; counts every text it embeds."""

    def __init__(self, dim: int = 64) -> None:
        self.dim, self.texts = dim, 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for term in terms(text):
                out[row, int(hashlib.md5(term.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)
