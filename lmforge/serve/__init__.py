"""Serving: the engine (continuous batching, paged KV cache, prefix cache, many LoRA adapters
in one batch) and the OpenAI-compatible HTTP app around it."""

from lmforge.serve.blocks import BlockManager
from lmforge.serve.engine import Engine, EngineConfig
from lmforge.serve.lora import AdapterStore, parse_adapters
from lmforge.serve.requests import Output, Request

__all__ = [
    "AdapterStore",
    "BlockManager",
    "Engine",
    "EngineConfig",
    "Output",
    "Request",
    "parse_adapters",
]
