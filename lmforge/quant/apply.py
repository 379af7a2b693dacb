"""Quantize a whole model in place, and save / load the quantized model.

`quantize_model` swaps nn.Linear modules for NF4Linear (every linear layer but the output
head by default — QLoRA's recipe; embeddings are not linear layers and stay in float) and
reports what it saved. Quantize first, then apply LoRA: LoRA wraps the NF4Linear bases.

A saved quantized model is a directory:

    path/
      model.safetensors    the whole state dict: packed uint8 codes, constants, float rest
                           (a tensor shared by two names, a tied head, is stored once)
      quantization.json    which modules are NF4Linear and how (type, block, double, shape),
                           plus the aliases of shared tensors

`load_quantized(model, path)` takes a freshly built float model of the same shape, turns the
recorded modules into empty NF4Linear layers and loads every tensor; a checkpoint of another
shape is refused with a CheckpointError that names the module and both shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.targets import OUTPUT_HEADS, match_targets
from lmforge.quant.embed16 import STORAGE_DTYPES, Stored16, store_embeddings
from lmforge.quant.linear4bit import NF4Linear
from lmforge.quant.nf4 import check_settings

WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "quantization.json"
FORMAT = "lmforge-quantized"
FORMAT_VERSION = 1


@dataclass
class QuantReport:
    """What `quantize_model` did: layers swapped and the storage of their weights."""

    quant_type: str  # code book used
    double_quant: bool  # constants stored in 8 bits
    blocksize: int  # values per block
    layers: list[str] = field(default_factory=list)  # full names of the quantized modules
    parameters: int = 0  # weights quantized (biases stay float and are not counted)
    bytes_before: int = 0  # float storage of those weights
    bytes_after: int = 0  # packed codes plus block constants
    tied: list[str] = field(default_factory=list)  # quantized, but the float weight is still
    # held by another module (a head tied to the embedding): those bytes are not freed
    embeddings: list[str] = field(default_factory=list)  # stored in 16 bits (embed16.py)
    embedding_bytes_saved: int = 0  # what that storage saves

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def bits_per_parameter(self) -> float:
        """Storage per quantized weight, constants included (4.127 for NF4 + double quant)."""
        return 8 * self.bytes_after / self.parameters if self.parameters else 0.0

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after + self.embedding_bytes_saved

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "num_layers": self.num_layers,
            "bits_per_parameter": self.bits_per_parameter,
            "bytes_saved": self.bytes_saved,
        }


def _select(model: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """Names of the nn.Linear modules to quantize, in model order."""
    if targets is None:  # every float linear layer but the head
        linear = match_targets(model, "all-linear")
        return [n for n in linear if isinstance(model.get_submodule(n), nn.Linear)]
    names = match_targets(model, [targets] if isinstance(targets, str) else list(targets))
    for name in names:
        if isinstance(model.get_submodule(name), NF4Linear):
            raise ConfigError(f"quantize_model: module {name!r} is already quantized")
    return names


def quantize_model(
    model: nn.Module,
    quant_type: str = "nf4",
    double_quant: bool = True,
    blocksize: int = 64,
    targets: Sequence[str] | None = None,
    embedding_dtype: str | None = None,
) -> QuantReport:
    """Swap nn.Linear modules for NF4Linear in place and report the storage saved.

    targets: module names (full, or their last parts such as "q_proj") to quantize, in the
    syntax of model/targets.py; None quantizes every nn.Linear but the output head.
    embedding_dtype: "bfloat16" or "float16" stores the embeddings (and a head tied to them)
    in 16 bits, frozen, as QLoRA keeps its unquantized weights (embed16.py); None leaves them."""
    check_settings(quant_type, blocksize)
    names = _select(model, targets)
    if not names:
        raise ConfigError("quantize_model found no nn.Linear to quantize (already quantized?)")
    report = QuantReport(quant_type, double_quant, blocksize)
    owners: dict[int, int] = {}  # id(parameter) → how many modules hold it
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for name in names:
        linear = model.get_submodule(name)
        layer = NF4Linear.from_linear(linear, quant_type, double_quant, blocksize)
        model.set_submodule(name, layer)  # the float weight is freed here unless tied
        if owners.get(id(linear.weight), 0) > 1:
            report.tied.append(name)
        report.layers.append(name)
        report.parameters += linear.weight.numel()
        report.bytes_before += linear.weight.numel() * linear.weight.element_size()
        report.bytes_after += layer.storage_bytes()
        del linear, layer
    if embedding_dtype is not None:
        before = _float_bytes(model)
        report.embeddings = store_embeddings(model, embedding_dtype)
        report.embedding_bytes_saved = before - _float_bytes(model)
    return report


class QuantizeOnRead:
    """`load_hf_dir(..., on_module=)` hook: every linear layer but the head is quantized with
    `settings` (quantize_model's) the moment its tensors are in; `finish(model)` then stores
    the embeddings in 16 bits if asked (after loading ties the head to them)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.per_layer = {k: v for k, v in settings.items() if k != "embedding_dtype"}
        self.embedding_dtype = settings.get("embedding_dtype")

    def __call__(self, model: nn.Module, name: str) -> None:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in OUTPUT_HEADS:
            quantize_model(model, targets=[name], **self.per_layer)

    def finish(self, model: nn.Module) -> nn.Module:
        if self.embedding_dtype:
            store_embeddings(model, self.embedding_dtype)
        return model


def _float_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct float parameters."""
    unique = {id(p): p for p in model.parameters() if p.is_floating_point()}
    return sum(p.numel() * p.element_size() for p in unique.values())


# ──────────────────────────────────────────────────────────────────── save / load


def _unique_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict with each shared tensor once (safetensors refuses aliases) + alias → name."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    return tensors, aliases


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write a quantized model to directory `path` (see the module docstring)."""
    path = Path(path)
    modules = {n: m.settings() for n, m in model.named_modules() if isinstance(m, NF4Linear)}
    if not modules:
        raise ConfigError(
            "save_quantized: the model has no NF4Linear layer; call quantize_model(model) first"
        )
    tensors, aliases = _unique_tensors(model)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "modules": modules, "aliases": aliases}
    stored = {n: m.weight.dtype for n, m in model.named_modules() if isinstance(m, Stored16)}
    if stored:  # 16-bit embeddings: load_quantized stores the fresh model's the same way
        meta["embedding_dtype"] = str(next(iter(stored.values()))).removeprefix("torch.")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), {"format": FORMAT}))
    atomic_write_json(path / SIDECAR_FILE, meta)  # written last: a complete save has both
    return path


def _read_sidecar(path: Path) -> dict[str, Any]:
    file = path / SIDECAR_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{file} is missing; {path} is not a quantized model saved by save_quantized "
            "(check the path, or save the model again)"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is corrupt or unreadable ({e}); save the model again") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "modules" not in meta:
        raise CheckpointError(f"{file} is not an lmforge quantization sidecar (format {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format version {meta.get('version')}; this lmforge reads {FORMAT_VERSION}"
        )
    stored = meta.get("embedding_dtype")
    if stored is not None and stored not in STORAGE_DTYPES:
        raise CheckpointError(
            f"{file}: embedding_dtype {stored!r} is not one of {sorted(STORAGE_DTYPES)}; the "
            "sidecar is corrupt, save the model again"
        )
    return meta


def _read_weights(path: Path) -> dict[str, Tensor]:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; save_quantized(model, {str(path)!r}) writes it")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors has its own error types for a truncated file
        raise CheckpointError(f"{file} is corrupt or unreadable ({e}); save the model again") from e


def _skeleton_layer(model: nn.Module, name: str, spec: dict[str, Any], file: Path) -> NF4Linear:
    """An empty NF4Linear for module `name`, after checking the model's layer has its shape."""
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(
            f"{file}: quantized module {name!r} does not exist in this model; build the model "
            "the checkpoint was saved from"
        ) from None
    if not (hasattr(old, "in_features") and hasattr(old, "out_features")):
        raise CheckpointError(f"{file}: module {name!r} is a {type(old).__name__}, not linear")
    saved = (spec["out_features"], spec["in_features"])
    have = (old.out_features, old.in_features)
    if saved != have:
        raise CheckpointError(
            f"{file}: module {name!r} has shape (out, in) = {saved} in the checkpoint but "
            f"{have} in the model; build the model with the config it was saved from"
        )
    if isinstance(old, NF4Linear):
        dtype, device = old.compute_dtype, old.qweight.device
    else:
        dtype, device = old.weight.dtype, old.weight.device
    settings = {k: v for k, v in spec.items() if k != "compute_dtype"}
    return NF4Linear(**settings, compute_dtype=dtype, device=device)


def _check_tensors(model: nn.Module, tensors: dict[str, Tensor], file: Path) -> None:
    expected = model.state_dict()
    for name in list(expected) + [n for n in tensors if n not in expected]:
        if name not in tensors:
            problem = f"tensor {name!r} of the model is not in the checkpoint"
        elif name not in expected:
            problem = f"tensor {name!r} of the checkpoint is not in the model"
        elif tensors[name].shape != expected[name].shape:
            problem = (
                f"tensor {name!r} has shape {list(tensors[name].shape)} in the checkpoint "
                f"but {list(expected[name].shape)} in the model"
            )
        else:
            continue
        raise CheckpointError(
            f"{file} was saved from another model: {problem}; build the model with the config "
            "the checkpoint was saved from"
        )


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Quantize the recorded modules of a fresh float `model` and load the saved tensors."""
    path = Path(path)
    meta = _read_sidecar(path)
    tensors = _read_weights(path)
    file = path / WEIGHTS_FILE
    for alias, name in meta.get("aliases", {}).items():
        if name in tensors:
            tensors[alias] = tensors[name]
    sidecar = path / SIDECAR_FILE
    layers = {n: _skeleton_layer(model, n, spec, sidecar) for n, spec in meta["modules"].items()}
    originals = {name: model.get_submodule(name) for name in layers}
    for name, layer in layers.items():
        model.set_submodule(name, layer)
    try:
        _check_tensors(model, tensors, file)
    except CheckpointError:
        for name, old in originals.items():  # leave the caller's model as it was
            model.set_submodule(name, old)
        raise
    if meta.get("embedding_dtype"):  # as saved, so the 16-bit tensors load without widening
        store_embeddings(model, meta["embedding_dtype"])
    model.load_state_dict(tensors, strict=True)
    return model
