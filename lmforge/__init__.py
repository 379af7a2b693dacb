"""lmforge: the whole life of a language model, natively on PyTorch.

    import lmforge
    model = lmforge.load_model("smollm2-135m-instruct")          # native CausalLM
    tokenizer = lmforge.load_tokenizer("smollm2-135m-instruct")
    prompt = lmforge.chat_format([{"role": "user", "content": "Hi!"}], tokenizer)

Names are imported on first use, so `import lmforge` (and the CLI) start fast.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "lmforge.hub",
    "load_tokenizer": "lmforge.hub",
    "chat_format": "lmforge.chat",
    "CausalLM": "lmforge.model",
    "ModelConfig": "lmforge.model",
    "preset": "lmforge.model",
    "generate": "lmforge.model.generate",
    "stream": "lmforge.model.generate",
    "SamplingConfig": "lmforge.model.generate",
    "Tokenizer": "lmforge.tokenizer",
    "train": "lmforge.train",
    "TrainConfig": "lmforge.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "train":  # the package, which calls the loop (see lmforge/train/__init__.py)
        return import_module("lmforge.train")
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
