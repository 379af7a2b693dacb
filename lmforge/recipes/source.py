"""What `generate`, `chat` and `eval` load: a model, how to hold it, and a trained delta; and
how `generate` and `chat` sample from it.

Sampling defaults come from the checkpoint, as transformers takes them: a setting left
unset is the checkpoint's generation_config.json's (the embedded SmolLM2 carries its model
card's temperature 0.2 and top-p 0.9), else the verb's own; a flag overrides both. Every
end-of-sequence id the checkpoint names stops generation too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from lmforge.config import arg
from lmforge.errors import ConfigError
from lmforge.hub import LOADERS, GenerationDefaults, load_model, load_tokenizer
from lmforge.model.generate import SamplingConfig
from lmforge.peft import load_adapter
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import resolve_device


@dataclass
class ModelSource:
    model: str = "smollm2-135m-instruct"  # embedded model name or model directory (runs/X/model)
    backend: str = arg("native", choices=LOADERS.names)  # native | hf (transformers' model)
    adapter: str = ""  # a trained delta: a finetune run directory, its delta/ or a peft adapter
    force: bool = False  # apply the adapter even to another base than the one it was trained on
    device: str = "cpu"  # where the model runs: cpu | cuda | cuda:N | auto (cuda if there is one)

    def validate(self) -> None:
        resolve_device(self.device)  # a CUDA device asked for where there is none: refused now
        if self.backend not in LOADERS:
            raise ConfigError(
                f"backend {self.backend!r} is unknown",
                fix="choose {backend} from " + ", ".join(LOADERS.names()),
            )


def load_source(source: ModelSource, *, merge: bool = False) -> tuple[nn.Module, Tokenizer]:
    """(model in eval mode on `source.device` with the adapter applied, tokenizer); `merge`
    folds a mergeable delta into the base weights, so generation runs at the base model's
    speed."""
    model = load_model(source.model, backend=source.backend)
    if source.adapter:
        delta = load_adapter(source.adapter, model, force=source.force)
        if merge and delta.mergeable:
            delta.merge()
        model = delta.model
    return model.to(resolve_device(source.device)).eval(), load_tokenizer(source.model)


@dataclass
class SamplingFlags:
    """Unset settings are the checkpoint's generation_config.json's, else `defaults`."""

    max_new_tokens: int = 200  # most new tokens generated
    temperature: float | None = None  # 0 = greedy; default: the checkpoint's, else 0.8
    top_k: int | None = None  # sample among the k likeliest, 0 = off; default: checkpoint's, else 0
    top_p: float | None = None  # nucleus mass, 1 = off; default: the checkpoint's, else 1
    repetition_penalty: float | None = None  # 1 = off; default: the checkpoint's, else 1
    seed: int | None = None  # seed of the sampling generator (None: torch's global one)
    stop: list[str] = field(default_factory=list)  # text that ends the output

    # The verb's own defaults, for what neither a flag nor the checkpoint sets.
    defaults: ClassVar[dict[str, Any]] = {
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
    }

    def sampling(self, found: GenerationDefaults) -> tuple[SamplingConfig, dict[str, str]]:
        """The sampling config and where each setting came from (flag, file, default)."""
        chosen, origin = {}, {}
        for name, builtin in self.defaults.items():
            flag = getattr(self, name)
            if flag is not None:
                chosen[name], origin[name] = flag, "flag"
            elif name in found.settings:
                chosen[name], origin[name] = found.settings[name], found.source
            else:
                chosen[name], origin[name] = builtin, "default"
        config = SamplingConfig(
            max_new_tokens=self.max_new_tokens, seed=self.seed, stop=list(self.stop), **chosen
        )
        config.validate()
        return config, origin


def describe_sampling(config: SamplingConfig, origin: dict[str, str]) -> str:
    """One line: each setting and, unless a flag set it, where it came from."""
    parts = []
    for name, where in origin.items():
        value = getattr(config, name)
        parts.append(f"{name} {value:g}" + ("" if where == "flag" else f" ({where})"))
    return "sampling: " + ", ".join(parts)
