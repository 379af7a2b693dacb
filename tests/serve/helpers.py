"""A tiny native model and tokenizer for the engine and server tests, and a request driver."""

from __future__ import annotations

import copy

import torch

from lmforge import peft
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


def saved_delta(base, directory, method: str, config: dict, seed: int, std: float = 0.5):
    """`method` on a copy of `base` with visibly non-zero tensors, saved at `directory`; the
    tuned model."""
    delta = peft.apply(copy.deepcopy(base), method, config, seed=seed)
    with torch.no_grad():
        for p in delta.trainable_parameters().values():
            p.normal_(0, std, generator=torch.Generator().manual_seed(seed + p.numel()))
    delta.save(directory)
    return delta.model


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """create_app(state) under uvicorn in a thread on 127.0.0.1 (a context manager)."""

    def __init__(self, state, api_key: str = "") -> None:
        import uvicorn

        from lmforge.serve.app import create_app

        self.port = free_port()
        config = uvicorn.Config(
            create_app(state, api_key), host="127.0.0.1", port=self.port, log_level="error"
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def server_state(lm, tok, adapters=None, limits=None, **engine_config):
    from lmforge.chat import chat_stop_tokens
    from lmforge.serve.limits import Limits
    from lmforge.serve.submit import ServerState

    eng = Engine(lm, tok, EngineConfig(block_size=4, **engine_config), adapters)
    eos = [tok.eos_id]
    return ServerState(
        eng, tok, "tiny", limits or Limits(max_tokens=48), {}, eos, eos + chat_stop_tokens(tok)
    )
