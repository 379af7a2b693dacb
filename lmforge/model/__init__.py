"""The native Llama-style decoder, its configuration and generation."""

from lmforge.model.attention import KVCache
from lmforge.model.config import ModelConfig, preset
from lmforge.model.gpt import CausalLM, CausalLMOutput, loss_only
from lmforge.model.host import Geometry, float_placement, host_for, set_gradient_checkpointing

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "Geometry",
    "KVCache",
    "ModelConfig",
    "float_placement",
    "host_for",
    "loss_only",
    "preset",
    "set_gradient_checkpointing",
]
