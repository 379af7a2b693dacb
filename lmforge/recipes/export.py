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

from lmforge.config import apply_overrides, from_dict, read_yaml
from lmforge.errors import ConfigError
from lmforge.export import EXPORTERS, QUANTS, export, open_source


@dataclass
class ExportConfig:
    source: str = ""  # a model name or directory, a run directory, a delta or peft adapter
    format: str = "hf"  # hf | peft | merged | gguf
    out: str = ""  # the directory to write (replaced whole when it holds an earlier export)
    quant: str = "f16"  # gguf weights: f16 | q8_0 | q4_0
    base: str = ""  # the base model of a delta that does not record it (or another base)
    force: bool = False  # apply a delta to a base other than the one it records

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("name what to export: lmforge export SOURCE --format F --out DIR")
        if not self.out:
            raise ConfigError(f"name the output directory: lmforge export {self.source} --out DIR")
        if self.format not in EXPORTERS:
            raise ConfigError(
                f"--format {self.format!r} is unknown; choose from {', '.join(EXPORTERS.names())}"
            )
        if self.quant not in QUANTS:
            raise ConfigError(
                f"--quant {self.quant!r} is unknown; choose from {', '.join(QUANTS.names())}"
            )


def load_config(path: str | Path | None, overrides: list[str]) -> ExportConfig:
    raw = apply_overrides(read_yaml(path) if path else {}, overrides)
    try:
        return from_dict(ExportConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def run_export(cfg: ExportConfig) -> Path:
    """Load the source and write it in the chosen format; returns the output directory."""
    cfg.validate()
    return export(open_source(cfg.source, cfg.base, cfg.force), cfg.format, cfg.out, cfg.quant)
