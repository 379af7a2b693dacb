"""LoRA adapters in Hugging Face PEFT's directory layout, both ways.

    directory/
      adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, ...
      adapter_model.safetensors  base_model.model.<module>.lora_A.weight / lora_B.weight

Native models carry transformers' Llama module names, so the only renaming is peft's
"base_model.model." prefix (peft keeps no adapter name in the saved keys). A directory
written here loads with `peft.PeftModel.from_pretrained(base, directory)`, and an adapter
trained with peft loads with `load_peft_lora(directory, model)` onto either a transformers
model or its native import. peft is not needed for either direction.

Only plain LoRA is read: DoRA, per-module ranks (rank_pattern/alpha_pattern), biases,
extra trained modules and layer subsets are peft features without an lmforge counterpart
and raise CheckpointError naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.errors import CheckpointError, ConfigError
from lmforge.peft.base import DeltaMethod
from lmforge.peft.lora import Lora, LoraConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."

# peft config fields that change the computation, with the value plain LoRA has.
PLAIN_LORA: dict[str, Any] = {
    "use_dora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "layers_to_transform": None,
    "exclude_modules": None,
    "lora_bias": False,
    "target_parameters": None,
    "trainable_token_indices": None,
    "layer_replication": None,
    "alora_invocation_tokens": None,
    "arrow_config": None,
    "use_qalora": False,
}


def base_name(method: DeltaMethod) -> str | None:
    """The name (or path) of the base a method was applied to, as peft records it."""
    return (method.base or {}).get("name_or_path") or None


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _peft_targets(method: Lora) -> list[str]:
    """target_modules for peft: the wrapped names' last parts when those select exactly the
    wrapped modules (peft matches "name or ends with .name"), else the full names."""
    model = method.model
    outer = [n for n, _ in model.named_modules() if n]
    inside = tuple(f"{n}." for n in method.wrapped)
    outer = [n for n in outer if not n.startswith(inside)]  # skip LoRA's own submodules
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in method.wrapped})
    selected = [n for n in outer if n.rsplit(".", 1)[-1] in suffixes]
    return suffixes if sorted(selected) == sorted(method.wrapped) else sorted(method.wrapped)


def save_peft_lora(
    method: Lora, directory: str | Path, base_model_name_or_path: str | None = None
) -> Path:
    """Write `method` (applied to a model) as a peft LoRA adapter directory."""
    if not isinstance(method, Lora) or method.model is None:
        raise ConfigError("save_peft_lora needs an lmforge Lora that has been applied to a model")
    if not method.wrapped:
        raise ConfigError("this Lora was merged and unloaded; there is no adapter left to save")
    directory = Path(directory)
    c: LoraConfig = method.config
    tensors = {PREFIX + n: t.contiguous().cpu() for n, t in method.state_dict().items()}
    meta = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or base_name(method),
        "r": c.r,
        "lora_alpha": _number(c.alpha),
        "lora_dropout": c.dropout,
        "target_modules": _peft_targets(method),
        "use_rslora": c.rslora,
        "init_lora_weights": True if c.init == "kaiming" else c.init,
        "inference_mode": True,
        **PLAIN_LORA,
    }
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), {"format": "pt"}))
    atomic_write_json(directory / CONFIG_FILE, meta)
    return directory


def read_adapter_dir(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not weights_path.exists() and (directory / "adapter_model.bin").exists():
        raise CheckpointError(
            f"{directory} holds adapter_model.bin (a pickle), which lmforge does not read; "
            "re-save the adapter with peft's save_pretrained(..., safe_serialization=True)"
        )
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        state = load_file(str(weights_path))
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{e.filename} is missing: {directory} is not a peft adapter directory"
        ) from None
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{directory}: the peft adapter is unreadable ({e})") from None
    return meta, state


def _lora_config(meta: dict[str, Any], path: Path) -> LoraConfig:
    """The LoraConfig of a peft adapter_config.json; an error for what lmforge cannot run."""
    if meta.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {meta.get('peft_type')!r}, not 'LORA'")
    for key, plain in PLAIN_LORA.items():
        value = meta.get(key, plain)
        if value != plain and not (plain is None and value in ([], {})):
            raise CheckpointError(
                f"{path}: {key}={value!r} is a peft feature lmforge's LoRA does not implement "
                f"(plain LoRA has {plain!r}); merge it with peft, or retrain without it"
            )
    targets = meta.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        targets = "re:" + targets  # peft matches a string target in full, as "re:" does
    elif isinstance(targets, list | tuple):
        targets = sorted(targets)
    try:
        config = LoraConfig(
            r=int(meta["r"]),
            alpha=float(meta["lora_alpha"]),
            dropout=float(meta.get("lora_dropout", 0.0)),
            targets=targets,
            rslora=bool(meta.get("use_rslora", False)),
        )
        config.validate()
    except KeyError as e:
        raise CheckpointError(f"{path}: field {e} is missing") from None
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config


def _own_name(key: str, path: Path) -> str:
    """peft key → lmforge parameter name: drop the prefix (and an adapter name, if kept)."""
    if not key.startswith(PREFIX):
        raise CheckpointError(f"{path}: key {key!r} does not start with {PREFIX!r}")
    name = key[len(PREFIX) :]
    for part in ("lora_A", "lora_B"):
        name = name.replace(f".{part}.default.", f".{part}.")
    return name


def read_peft_lora(directory: str | Path) -> tuple[LoraConfig, dict[str, Tensor]]:
    """The LoraConfig and the tensors (by lmforge parameter name) of a peft LoRA adapter."""
    directory = Path(directory)
    meta, state = read_adapter_dir(directory)
    config = _lora_config(meta, directory / CONFIG_FILE)
    return config, {_own_name(k, directory / WEIGHTS_FILE): v for k, v in state.items()}


def load_peft_lora(directory: str | Path, model: nn.Module) -> Lora:
    """Apply the peft LoRA adapter in `directory` to `model` (transformers or native)."""
    directory = Path(directory)
    config, own = read_peft_lora(directory)
    method = Lora(config)
    try:
        method.apply(model)
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: does not fit this model: {e}") from None
    method.load_state_dict(own, origin=str(directory / WEIGHTS_FILE))
    return method
