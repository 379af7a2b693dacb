"""`lmforge generate`: load a model and its tokenizer, continue a prompt (streamed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from lmforge.config import arg, pick
from lmforge.model.generate import SamplingConfig, generate, stream
from lmforge.recipes.source import ModelSource, load_source


@dataclass
class GenerateConfig(SamplingConfig, ModelSource):  # fields (and flags): model first
    prompt: str = arg("", positional=True, aliases=("--prompt",))  # text to continue (or none)
    max_new_tokens: int = 200  # most new tokens generated
    temperature: float = 0.8  # softmax temperature; 0 = greedy decoding (argmax)
    truncate: bool = False  # keep the prompt's last tokens when it is longer than the context
    no_stream: bool = False  # print the text only at the end

    def validate(self) -> None:
        ModelSource.validate(self)
        SamplingConfig.validate(self)

    def sampling(self) -> SamplingConfig:
        return pick(SamplingConfig, self)


def run_generate(cfg: GenerateConfig, out: TextIO | None = None) -> str:
    """Print the prompt and its continuation to `out` (stdout); return the continuation."""
    out = out or sys.stdout
    cfg.validate()
    model, tokenizer = load_source(cfg, merge=True)
    prompt = (
        tokenizer.encode(cfg.prompt, add_special_tokens=True) if cfg.prompt else [tokenizer.eos_id]
    )
    kwargs = dict(eos_token_id=tokenizer.eos_id, decode=tokenizer.decode, truncate=cfg.truncate)
    out.write(cfg.prompt)
    if cfg.no_stream:
        text = generate(model, [prompt], cfg.sampling(), **kwargs)[0].text
        out.write(text)
    else:
        pieces = []
        for piece in stream(model, prompt, cfg.sampling(), **kwargs):
            out.write(piece)
            out.flush()
            pieces.append(piece)
        text = "".join(pieces)
    out.write("\n")
    return text
