"""`lmforge serve MODEL [--adapter NAME=PATH ...]`: an OpenAI-compatible server on 127.0.0.1.

    load_model(native) ─► [AdapterStore: LoRA slots, virtual-token prefixes] ─► Engine (thread)
                       ─► create_app (FastAPI) ─► uvicorn (SIGTERM: drain, then exit)

lmforge serve smollm2-135m-instruct
lmforge serve runs/pretrain/model --adapter sql=runs/ft-sql --adapter poem=exports/poem-peft
lmforge serve smollm2-135m-instruct --api_key=SECRET --host=0.0.0.0 --limits.max_tokens=256
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.assets import asset_path
from lmforge.chat import chat_stop_tokens
from lmforge.config import arg
from lmforge.errors import ConfigError
from lmforge.hub import generation_defaults, load_model, load_tokenizer
from lmforge.prompting.embed import SentenceEncoder
from lmforge.quant.decode import DECODE_FORMATS, quantize_for_decoding
from lmforge.serve import AdapterStore, Engine, EngineConfig, parse_adapters
from lmforge.serve.app import create_app
from lmforge.serve.limits import Limits
from lmforge.serve.submit import ServerState
from lmforge.serve.tool_calls import ToolCalls

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    model: str = arg("smollm2-135m-instruct", positional=True)  # embedded name or model directory
    adapters: list[str] = arg(factory=list, aliases=("--adapter",))  # NAME=PATH → MODEL:NAME
    name: str = ""  # the model id clients send; "" = the model's name (a path's last part)
    host: str = "127.0.0.1"  # address to bind; anything but loopback is reachable by others
    port: int = 8000  # TCP port
    api_key: str = ""  # Bearer key required on every route but /health ("" = $LMFORGE_API_KEY)
    embeddings: str = "all-minilm-l6-v2"  # sentence-embedding model of /v1/embeddings (empty: off)
    adapter_budget_mb: float = 64.0  # memory for loaded adapters (LRU beyond it)
    max_adapters: int = 8  # adapters loaded at once at most
    force: bool = False  # serve adapters trained on another base
    threads: int = 0  # torch threads (0 = torch's default)
    quantize: str = arg("", choices=DECODE_FORMATS.names)  # integer weights (empty: floats)
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> None:
        parse_adapters(self.adapters)
        if self.quantize and self.quantize not in DECODE_FORMATS:
            raise ConfigError(
                f"quantize {self.quantize!r} is unknown",
                fix="choose {quantize} from " + ", ".join(DECODE_FORMATS.names()),
            )
        if not 0 < self.port < 65536:
            raise ConfigError(
                f"port {self.port} is not a TCP port", fix="choose {port} in 1..65535"
            )


def _embedder(name: str):
    """texts → ((N, D) unit vectors, tokens read) with the embedded MiniLM (loaded on first use)."""
    path = asset_path(name)
    encoder: list[SentenceEncoder] = []

    def embed(texts: list[str]):
        if not encoder:
            encoder.append(SentenceEncoder(path))
        enc = encoder[0]
        ids = enc.tokenizer(texts, truncation=True, max_length=enc.max_length)["input_ids"]
        return enc(texts), sum(len(i) for i in ids)

    return embed


def build_state(cfg: ServeConfig) -> ServerState:
    """Load the model, adapters and tokenizer; the server's shared state (no socket yet)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_model(cfg.model, backend="native")
    if cfg.quantize:
        quantize_for_decoding(model, cfg.quantize)
    tokenizer = load_tokenizer(cfg.model)
    adapters = None
    if cfg.adapters:
        paths = parse_adapters(cfg.adapters)
        adapters = AdapterStore(model, paths, cfg.adapter_budget_mb, cfg.max_adapters, cfg.force)
    engine = Engine(model, tokenizer, cfg.engine, adapters)
    defaults = generation_defaults(cfg.model)
    eos = [i for i in dict.fromkeys([*defaults.eos_token_ids, tokenizer.eos_id]) if i is not None]
    embed = _embedder(cfg.embeddings) if cfg.embeddings else None
    chat_eos = list(dict.fromkeys([*eos, *chat_stop_tokens(tokenizer)]))
    return ServerState(
        engine,
        tokenizer,
        cfg.name or Path(cfg.model).name,
        cfg.limits,
        defaults.settings,
        eos,
        chat_eos,
        extensions=ToolCalls(tokenizer, chat_eos),
        embed=embed,
        embedding_model=cfg.embeddings,
    )


def run_serve(cfg: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT; running requests finish before the process exits."""
    import uvicorn

    api_key = cfg.api_key or os.environ.get("LMFORGE_API_KEY", "")
    if cfg.host not in LOOPBACK and not api_key:
        print(
            f"warning: serving on {cfg.host} without --api_key: anyone who can reach this "
            "address can use the model",
            file=sys.stderr,
        )
    state = build_state(cfg)
    app = create_app(state, api_key)
    print(f"serving {state.name} on http://{cfg.host}:{cfg.port} (OpenAI API under /v1)")
    uvicorn.run(
        app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=30
    )
