"""The export formats: one function per format, from a loaded source to a directory.

    format   writes                                         loaded by
    hf       config.json + model.safetensors + tokenizer    transformers, vLLM, lmforge
    peft     adapter_config.json + adapter_model.safetensors peft.PeftModel, vLLM --lora-modules
    merged   the base with the delta folded in, as `hf`     transformers, vLLM, lmforge
    gguf     model.gguf (+ Ollama Modelfile)                llama.cpp, Ollama

Every format writes its directory beside `out` and swaps it in whole (atomic).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lmforge.atomic import atomic_directory
from lmforge.chat import chat_stop_strings, chat_template_for
from lmforge.errors import CheckpointError, ConfigError
from lmforge.export.gguf import GGUF_FILE, write_gguf
from lmforge.export.modelfile import modelfile
from lmforge.export.source import Source, base_directory
from lmforge.hub import generation_defaults
from lmforge.model.gpt import CausalLM
from lmforge.model.hf import save_hf_dir
from lmforge.peft.interop import save_peft_lora, save_peft_virtual
from lmforge.peft.lora import Lora
from lmforge.peft.virtual.wrapper import VirtualTokenMethod
from lmforge.registry import Registry

Exporter = Callable[[Source, Path, str], Path]  # (source, out directory, quant) → out
EXPORTERS: Registry[Exporter] = Registry("export format")


def _tokenizer_source(source: Source) -> object:
    """What save_hf_dir copies the tokenizer from: the base's directory (all of transformers'
    tokenizer files and generation_config.json) when it has them, else lmforge's Tokenizer."""
    directory = base_directory(source.base)
    return directory if (directory / "tokenizer_config.json").is_file() else source.tokenizer


def plain_model(source: Source) -> CausalLM:
    """The model without a delta in it: the base, or the base with a mergeable delta folded in.
    A delta that cannot be merged is refused, naming the formats that keep it apart."""
    delta = source.delta
    if delta is None:
        return source.model
    if not delta.mergeable:
        raise ConfigError(
            f"{source.origin}: a {delta.name} delta cannot be merged into the base weights "
            f"({delta.family} method)",
            fix="export it apart with {format=peft}",
        )
    if isinstance(delta, Lora):
        return delta.merge_and_unload()
    delta.merge()  # specification methods: the trained tensors already are the model's
    return delta.model


@EXPORTERS.register("hf")
def export_hf(source: Source, out: Path, quant: str) -> Path:
    if source.delta is not None:
        raise ConfigError(
            f"{source.origin} is a {source.delta.name} delta and the hf format a plain model",
            fix="use {format=merged} (base + delta in one model) or {format=peft} (the delta)",
        )
    return save_hf_dir(source.model, out, _tokenizer_source(source))


@EXPORTERS.register("merged")
def export_merged(source: Source, out: Path, quant: str) -> Path:
    if source.delta is None:
        raise ConfigError(f"{source.origin} holds no delta to merge", fix="use {format=hf}")
    return save_hf_dir(plain_model(source), out, _tokenizer_source(source))


@EXPORTERS.register("peft")
def export_peft(source: Source, out: Path, quant: str) -> Path:
    delta = source.delta
    if isinstance(delta, Lora):
        save: Callable[..., Path] = save_peft_lora
    elif isinstance(delta, VirtualTokenMethod):
        save = save_peft_virtual
    else:
        what = f"a {delta.name} delta" if delta is not None else "a plain model"
        raise ConfigError(
            f"{source.origin} is {what}; peft's adapter format holds LoRA and the virtual-token "
            "methods (prompt, prefix, ptuning, ptuning2)",
            fix="use {format=merged} or {format=hf} instead",
        )
    return _atomic(out, "adapter_config.json", lambda tmp: save(delta, tmp, source.base))


@EXPORTERS.register("gguf")
def export_gguf(source: Source, out: Path, quant: str) -> Path:
    model = plain_model(source)
    if not isinstance(model, CausalLM):
        raise ConfigError(f"{source.origin}: GGUF export writes native decoders only")
    template = chat_template_for(source.tokenizer)
    sampling = generation_defaults(source.base).settings
    stops = chat_stop_strings(source.tokenizer)

    def write(tmp: Path) -> None:
        write_gguf(
            model, source.tokenizer, tmp / GGUF_FILE, quant, template, Path(source.base).name
        )
        text = modelfile(GGUF_FILE, template, stops, sampling, model.config.max_seq_len)
        (tmp / "Modelfile").write_text(text, encoding="utf-8")

    return _atomic(out, GGUF_FILE, write)


def _atomic(out: Path, marker: str, write: Callable[[Path], object]) -> Path:
    """Build `out` in a temporary sibling and swap it in; refuse a directory of other files."""
    try:
        with atomic_directory(out, lambda p: (p / marker).is_file()) as tmp:
            write(tmp)
    except FileExistsError:
        raise CheckpointError(
            f"{out} exists and holds files that are not an export of this format",
            fix="choose another {out}",
        ) from None
    return out


def export(source: Source, fmt: str, out: str | Path, quant: str = "f16") -> Path:
    """Write `source` in format `fmt` to the directory `out`."""
    if fmt not in EXPORTERS:
        raise ConfigError(
            f"format {fmt!r} is unknown", fix="choose {format} from " + ", ".join(EXPORTERS.names())
        )
    return EXPORTERS.get(fmt)(source, Path(out), quant)
