"""Real checkpoints by name: the embedded models, converted once into a cache, and loading.

    asset package (GGUF) ──convert once──► $LMFORGE_HOME/models/NAME/   (config.json,
                                                model.safetensors, tokenizer files)
    load_model(NAME or DIR, backend) ──► native CausalLM  |  transformers model
    load_tokenizer(NAME or DIR)      ──► Tokenizer (eos/pad/bos, chat template)

Converting SmolLM2 from GGUF takes ~30 s (mostly the tokenizer conversion);
reading the cache takes about a second. The conversion writes into a private
temporary directory beside the cache and renames it into place when complete,
so an interrupted conversion never passes for a cache; the temporary
directories of dead processes are removed on the next attempt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.assets import asset_path
from lmforge.atomic import fsync_dir
from lmforge.errors import AssetError, CheckpointError, ConfigError
from lmforge.model.hf import load_hf_dir, weight_files
from lmforge.quant.apply import QuantizeOnRead, quantize_model
from lmforge.registry import Registry
from lmforge.tokenizer import Tokenizer

MARKER = "lmforge-source.json"  # written last into a conversion; a cache without it is no cache
GENERATION_FILE = "generation_config.json"


def lmforge_home() -> Path:
    """$LMFORGE_HOME, default ~/.cache/lmforge (read at each call, so tests can change it)."""
    return Path(os.environ.get("LMFORGE_HOME") or "~/.cache/lmforge").expanduser()


@dataclass(frozen=True)
class Embedded:
    source: Callable[[], Path]  # locates the file to convert (AssetError when not installed)
    convert: Callable[[Path, Path], None]  # (source file, empty output directory)
    generation: dict[str, Any] = field(default_factory=dict)  # the model card's sampling


def convert_gguf(source: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint with transformers and save it as safetensors + tokenizer."""
    if importlib.util.find_spec("accelerate") is None:
        # transformers refuses GGUF files without it, although only the load path asks.
        raise AssetError(
            f"converting {source.name} needs the package 'accelerate': pip install accelerate"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        dtype=torch.float32,
        # Dense nn.Linear weights everywhere, even where GGUF matmul kernels are installed.
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are plain floats now; without this save_pretrained refuses (GGUF is
    # not serialisable) or writes a config that asks for the GGUF file again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # tokenizer.json, tokenizer_config.json, chat template


EMBEDDED: Registry[Embedded] = Registry("embedded model")
EMBEDDED.add(
    "smollm2-135m-instruct",
    Embedded(
        lambda: asset_path("smollm2-135m-instruct"),
        convert_gguf,
        {"do_sample": True, "temperature": 0.2, "top_p": 0.9},  # as its model card advises
    ),
)
CONVERSION = 2  # bumped when a conversion writes something new: older caches convert again


def _fingerprint(source: Path, span: int = 1 << 20) -> dict:
    """What identifies a source file by content: name, size and a hash of its first and last
    MiB (a GGUF header names every tensor). Not its path or time stamp, which differ between
    two environments that installed the same package, and would make them convert in turn."""
    size = source.stat().st_size
    digest = hashlib.sha256()
    with source.open("rb") as f:
        digest.update(f.read(span))
        f.seek(max(size - span, 0))
        digest.update(f.read(span))
    return {"source": source.name, "size": size, "sha256_ends": digest.hexdigest()}


def _is_cache_of(cache: Path, entry: Embedded) -> bool:
    """A complete conversion of the source installed now (or of any, if none is installed)."""
    try:
        recorded = json.loads((cache / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    try:
        source = entry.source()
    except AssetError:
        return True  # the package left; the cache still holds a complete model
    now = {**_fingerprint(source), "conversion": CONVERSION}
    return all(recorded.get(k) == now[k] for k in now)


def _merge_json(path: Path, values: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**data, **values}, indent=2) + "\n", encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(models: Path, name: str) -> None:
    """Remove temporary directories that dead conversions of `name` left behind."""
    for tmp in models.glob(f".{name}.tmp-*"):
        pid = tmp.name.removeprefix(f".{name}.tmp-").split("-", 1)[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)


def _convert(name: str, entry: Embedded, models: Path, cache: Path) -> None:
    source = entry.source()
    _clean_stale(models, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=models))
    outdated = tmp.with_name(tmp.name + "-outdated")
    try:
        entry.convert(source, tmp)
        if entry.generation:
            _merge_json(tmp / GENERATION_FILE, entry.generation)
        versions = {p: importlib.metadata.version(p) for p in ("transformers", "torch")}
        marker = {**_fingerprint(source), "conversion": CONVERSION, "name": name, **versions}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private; the cache is an ordinary directory
        if cache.exists():
            if _is_cache_of(cache, entry):  # another process finished first
                return
            cache.rename(outdated)  # outdated or incomplete: out of the way, then removed
        try:
            tmp.rename(cache)
        except OSError:
            if not _is_cache_of(cache, entry):  # else another process won the race
                raise
        fsync_dir(models)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(outdated, ignore_errors=True)


def ensure_converted(name: str = "smollm2-135m-instruct") -> Path:
    """The cached transformers directory of embedded model `name`, converting it on first use."""
    if name not in EMBEDDED:
        raise AssetError(
            f"unknown embedded model {name!r}; embedded: {', '.join(EMBEDDED.names())}"
        )
    entry = EMBEDDED.get(name)
    models = lmforge_home() / "models"
    cache = models / name
    if cache.is_dir() and _is_cache_of(cache, entry):
        return cache
    models.mkdir(parents=True, exist_ok=True)
    _convert(name, entry, models, cache)
    return cache


def _load_native(path: Path, dtype: torch.dtype, quantize: dict | None) -> nn.Module:
    if quantize is None:
        return load_hf_dir(path, dtype=dtype)
    hook = QuantizeOnRead(quantize)  # each layer as it is read: the float model never exists
    return hook.finish(load_hf_dir(path, dtype=dtype, on_module=hook))


def _load_transformers(path: Path, dtype: torch.dtype, quantize: dict | None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    weight_files(path)  # safetensors only: pickled weights are refused as on the native path
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: transformers cannot load it ({e})") from None
    if quantize is not None:  # after the fact: transformers loads the float weights first
        quantize_model(model, **quantize)
    return model


# How a checkpoint directory becomes a model: `backend=` of load_model, `--backend` of the CLI.
LOADERS: Registry[Callable[[Path, torch.dtype, dict | None], nn.Module]] = Registry("backend")
LOADERS.add("native", _load_native)
LOADERS.add("hf", _load_transformers)


def resolve(name_or_path: str | Path) -> Path:
    """The transformers directory behind an embedded name (converted if needed) or a path."""
    if str(name_or_path) in EMBEDDED:
        return ensure_converted(str(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    raise AssetError(
        f"{name_or_path!s} is neither an embedded model ({', '.join(EMBEDDED.names())}) "
        "nor a directory holding a transformers checkpoint"
    )


def load_model(
    name_or_path: str | Path,
    backend: str = "native",
    dtype: torch.dtype = torch.float32,
    quantize: dict | None = None,
) -> nn.Module:
    """An embedded model by name, or a local transformers directory, as a native CausalLM
    (backend="native") or as the transformers model itself (backend="hf"), in eval mode.

    quantize: settings of `lmforge.quant.quantize_model`, e.g. {"quant_type": "nf4"}; every
    linear layer but the head becomes an NF4Linear (natively, as it is read)."""
    if backend not in LOADERS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {LOADERS.names()}")
    model = LOADERS.get(backend)(resolve(name_or_path), dtype, quantize)
    model.name_or_path = str(name_or_path)  # what a delta trained on it records as its base
    return model


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer of an embedded model by name, of a model directory, or a tokenizer.json,
    with its special tokens and chat template from the tokenizer_config.json beside it."""
    path = Path(name_or_path).expanduser()
    if str(name_or_path) not in EMBEDDED and path.is_file():
        return Tokenizer.from_file(path)
    directory = resolve(name_or_path)
    if not (directory / "tokenizer.json").is_file():
        raise AssetError(
            f"{directory} holds no tokenizer.json; save one there with Tokenizer.save(dir) "
            "or transformers' tokenizer.save_pretrained(dir)"
        )
    return Tokenizer.from_file(directory)


@dataclass(frozen=True)
class GenerationDefaults:
    """A checkpoint's sampling settings (generation_config.json), read as transformers reads
    them: without do_sample, decoding is greedy whatever else the file says."""

    settings: dict[str, Any]  # SamplingConfig fields: temperature, top_k, top_p, ...
    eos_token_ids: list[int]  # every id that ends generation
    source: str  # the file they came from ("" when the checkpoint has none)


def generation_defaults(name_or_path: str | Path) -> GenerationDefaults:
    """The sampling settings of a model directory or embedded model; empty when it has none."""
    path = resolve(name_or_path) / GENERATION_FILE
    if not path.is_file():
        return GenerationDefaults({}, [], "")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable generation config ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object of generation settings")
    eos = raw.get("eos_token_id")
    eos_ids = [i for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)]
    if not raw.get("do_sample", False):
        settings: dict[str, Any] = {"temperature": 0.0}
    else:  # transformers' own defaults fill what the file leaves out
        settings = {
            "temperature": float(raw.get("temperature", 1.0)),
            "top_k": int(raw.get("top_k", 50) or 0),
            "top_p": float(raw.get("top_p", 1.0)),
        }
    if raw.get("repetition_penalty") is not None:
        settings["repetition_penalty"] = float(raw["repetition_penalty"])
    return GenerationDefaults(settings, eos_ids, str(path))
