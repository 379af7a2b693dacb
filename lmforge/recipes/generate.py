"""`lmforge generate`: load a model and its tokenizer, continue a prompt (streamed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from lmforge.config import arg
from lmforge.hub import GenerationDefaults, generation_defaults
from lmforge.model.generate import generate, stream
from lmforge.recipes.source import ModelSource, SamplingFlags, describe_sampling, load_source


@dataclass
class GenerateConfig(SamplingFlags, ModelSource):  # fields (and flags): model first
    prompt: str = arg("", positional=True, aliases=("--prompt",))  # text to continue (or none)
    truncate: bool = False  # keep the prompt's last tokens when it is longer than the context
    no_stream: bool = False  # print the text only at the end

    def validate(self) -> None:
        ModelSource.validate(self)
        SamplingFlags.sampling(self, GenerationDefaults({}, [], ""))  # the flags' own ranges


def run_generate(cfg: GenerateConfig, out: TextIO | None = None) -> str:
    """Print the prompt and its continuation to `out` (stdout); return the continuation."""
    out = out or sys.stdout
    cfg.validate()
    model, tokenizer = load_source(cfg, merge=True)
    found = generation_defaults(cfg.model)
    sampling, origin = cfg.sampling(found)
    print(describe_sampling(sampling, origin), file=sys.stderr)
    prompt = (
        tokenizer.encode(cfg.prompt, add_special_tokens=True) if cfg.prompt else [tokenizer.eos_id]
    )
    eos = [i for i in dict.fromkeys([tokenizer.eos_id, *found.eos_token_ids]) if i is not None]
    kwargs = dict(eos_token_id=eos, decode=tokenizer.decode, truncate=cfg.truncate)
    out.write(cfg.prompt)
    if cfg.no_stream:
        text = generate(model, [prompt], sampling, **kwargs)[0].text
        out.write(text)
    else:
        pieces = []
        for piece in stream(model, prompt, sampling, **kwargs):
            out.write(piece)
            out.flush()
            pieces.append(piece)
        text = "".join(pieces)
    out.write("\n")
    return text
