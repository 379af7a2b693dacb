"""Exports of lmforge models and deltas for other tools: transformers and vLLM (`hf`,
`merged`), peft (`peft`), llama.cpp and Ollama (`gguf` + Modelfile)."""

from lmforge.export.formats import EXPORTERS, export, plain_model
from lmforge.export.gguf import QUANTS, write_gguf
from lmforge.export.source import Source, locate, open_source

__all__ = [
    "EXPORTERS",
    "QUANTS",
    "Source",
    "export",
    "locate",
    "open_source",
    "plain_model",
    "write_gguf",
]
