"""Tiny models and inputs shared by the delta-method tests (native and transformers)."""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lmforge.model import CausalLM, preset

VOCAB, T = 61, 10
BACKENDS = ["native", "hf"]


def make(backend: str, width: int = 64, layers: int = 2, vocab: int = VOCAB) -> nn.Module:
    """A tiny model with fixed weights: the same call gives the same model."""
    torch.manual_seed(0)
    if backend == "native":
        model = CausalLM(preset("tiny", vocab_size=vocab, d_model=width, n_layer=layers))
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        )
        model = LlamaForCausalLM(config)
    return model.eval()


def ids(batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(ids()).logits
