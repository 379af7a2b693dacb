"""A tiny native model and tokenizer for the engine and server tests, and a request driver."""

from __future__ import annotations

import torch

from lmforge.model import CausalLM, preset
from lmforge.model.generate import SamplingConfig, generate
from lmforge.serve import Engine, EngineConfig, Output, Request
from lmforge.tokenizer import Tokenizer
from tests.conftest import TEXT

CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n" * 10


def tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT, CHINESE], vocab_size=320)


def model(vocab: int, seed: int = 0, context: int = 128) -> CausalLM:
    """Wide initialisation: peaked logits, so greedy choices are far from ties."""
    torch.manual_seed(seed)
    config = preset("tiny", vocab_size=vocab, tie_embeddings=False, init_std=0.3)
    return CausalLM(config.replace(max_seq_len=context)).eval()


def greedy(n: int, **kw) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.0, **kw)


def alone(model, prompt: list[int], sampling: SamplingConfig, eos: list[int] = ()) -> list[int]:
    return generate(model, [prompt], sampling, eos_token_id=list(eos))[0].token_ids


class Collected:
    """Everything the engine emitted for one request."""

    def __init__(self) -> None:
        self.outputs: list[Output] = []

    def __call__(self, out: Output) -> None:
        self.outputs.append(out)

    @property
    def tokens(self) -> list[int]:
        return [t for o in self.outputs for t in o.token_ids]

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs)

    @property
    def finish(self) -> str | None:
        return self.outputs[-1].finish_reason if self.outputs else None


def request(prompt: list[int], sampling: SamplingConfig, **kw) -> tuple[Request, Collected]:
    sink = Collected()
    return Request(prompt, sampling, sink, **kw), sink


def engine(model, tok, **config) -> Engine:
    return Engine(model, tok, EngineConfig(**config))
