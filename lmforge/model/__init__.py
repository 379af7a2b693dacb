"""The native Llama-style decoder, its configuration and generation."""

from lmforge.model.attention import KVCache
from lmforge.model.config import ModelConfig, preset
from lmforge.model.gpt import CausalLM, CausalLMOutput, loss_only, set_gradient_checkpointing

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "KVCache",
    "ModelConfig",
    "loss_only",
    "preset",
    "set_gradient_checkpointing",
]
