"""`lmforge export SOURCE --format peft|hf|merged|gguf [--quant f16|q8_0|q4_0] --out DIR`.

    open_source(SOURCE) ─► model (+ delta) ─► EXPORTERS[format] ─► DIR

lmforge export runs/pretrain --format hf --out exports/hf            # transformers, vLLM
lmforge export runs/ft --format peft --out exports/adapter           # peft, vLLM --lora-modules
lmforge export runs/ft --format merged --out exports/merged          # base + LoRA in one model
lmforge export smollm2-135m-instruct --format gguf --quant q8_0 --out exports/gguf  # llama.cpp
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.config import arg
from lmforge.errors import ConfigError
from lmforge.export import EXPORTERS, QUANTS, export, open_source


@dataclass
class ExportConfig:
    source: str = arg("", positional=True)  # model name or directory, run, delta or peft adapter
    format: str = arg("hf", choices=EXPORTERS.names)  # what to write
    out: str = ""  # the directory to write (replaced whole when it holds an earlier export)
    quant: str = arg("f16", choices=QUANTS.names)  # gguf weights
    base: str = ""  # the base model of a delta that does not record it (or another base)
    force: bool = False  # apply a delta to a base other than the one it records

    def validate(self) -> None:
        if self.format not in EXPORTERS:
            raise ConfigError(
                f"format {self.format!r} is unknown",
                fix="choose {format} from " + ", ".join(EXPORTERS.names()),
            )
        if self.quant not in QUANTS:
            raise ConfigError(
                f"quant {self.quant!r} is unknown",
                fix="choose {quant} from " + ", ".join(QUANTS.names()),
            )


def run_export(cfg: ExportConfig) -> Path:
    """Load the source and write it in the chosen format; returns the output directory."""
    cfg.validate()
    if not cfg.source:
        raise ConfigError(
            "nothing to export", fix="name it: lmforge export SOURCE {format=hf} {out=DIR}"
        )
    if not cfg.out:
        raise ConfigError(
            "no output directory", fix=f"name one: lmforge export {cfg.source} {{out=DIR}}"
        )
    out = export(open_source(cfg.source, cfg.base, cfg.force), cfg.format, cfg.out, cfg.quant)
    print(f"{cfg.format} export written to {out}")
    return out
