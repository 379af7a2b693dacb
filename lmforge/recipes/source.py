"""What `generate`, `chat` and `eval` load: a model, how to hold it, and a trained delta."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmforge.config import arg
from lmforge.errors import ConfigError
from lmforge.hub import LOADERS, load_model, load_tokenizer
from lmforge.peft import load_adapter
from lmforge.tokenizer import Tokenizer


@dataclass
class ModelSource:
    model: str = "smollm2-135m-instruct"  # embedded model name or model directory (runs/X/model)
    backend: str = arg("native", choices=LOADERS.names)  # native | hf (transformers' model)
    adapter: str = ""  # a trained delta: a finetune run directory, its delta/ or a peft adapter
    force: bool = False  # apply the adapter even to another base than the one it was trained on

    def validate(self) -> None:
        if self.backend not in LOADERS:
            raise ConfigError(
                f"backend {self.backend!r} is unknown",
                fix="choose {backend} from " + ", ".join(LOADERS.names()),
            )


def load_source(source: ModelSource, *, merge: bool = False) -> tuple[nn.Module, Tokenizer]:
    """(model in eval mode with the adapter applied, tokenizer); `merge` folds a mergeable
    delta into the base weights, so generation runs at the base model's speed."""
    model = load_model(source.model, backend=source.backend)
    if source.adapter:
        delta = load_adapter(source.adapter, model, force=source.force)
        if merge and delta.mergeable:
            delta.merge()
        model = delta.model
    return model.eval(), load_tokenizer(source.model)
