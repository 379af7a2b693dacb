"""What the alignment tests share: tiny models of both kinds with the same weights, a tiny
chat tokenizer, and trl's view of the same tokenizer."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaForCausalLM

from lmforge.model.hf import from_hf
from lmforge.tokenizer import Tokenizer
from tests import models

VOCAB = 61
TEXT = (
    "User: what is two plus two? Assistant: four. The topic is sport, business or tech. "
    "体育 科技 商业 — 这是一个测试。 Yes, no, maybe: the answer is 42. "
)


def llama(vocab: int = VOCAB) -> LlamaForCausalLM:
    """A 2 × 64 transformers Llama with random weights (no download), seeded."""
    return models.make("hf", vocab=vocab)


def make(backend: str, vocab: int = VOCAB) -> nn.Module:
    """The same weights as a transformers Llama or as the native CausalLM built from it."""
    hf = llama(vocab)
    return hf if backend == "hf" else from_hf(hf).eval()


def nudge(model: nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Move every trainable tensor off its value, reproducibly (policy ≠ reference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def chat_tokenizer() -> Tokenizer:
    """A byte-level BPE trained on a few lines (Chinese included), ChatML template."""
    return Tokenizer.train([TEXT * 30], vocab_size=300)


def hf_tokenizer(tokenizer: Tokenizer):
    from transformers import PreTrainedTokenizerFast

    eos = tokenizer.id_to_token(tokenizer.eos_id)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf, eos_token=eos, pad_token=eos)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
