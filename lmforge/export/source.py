"""What `lmforge export SOURCE` reads: a model, or a base model plus a trained delta.

    SOURCE                                   read as
    an embedded name (smollm2-135m-instruct)  that model
    DIR/config.json                           a transformers directory (lmforge pretrain writes one)
    DIR/model/config.json                     a pretrain run directory: DIR/model
    DIR/delta/ + DIR/config.yaml              a finetune run: base = config.yaml's `model`
    DIR/delta_config.json                     a saved delta: base = the model it records
    DIR/adapter_config.json                   a peft adapter: base = base_model_name_or_path

`--base` names the base model where the delta's record is missing or points elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.hub import EMBEDDED, load_model, load_tokenizer, resolve
from lmforge.peft import DeltaMethod, load_adapter
from lmforge.peft.base import CONFIG_FILE as DELTA_CONFIG
from lmforge.tokenizer import Tokenizer

PEFT_CONFIG = "adapter_config.json"


@dataclass
class Source:
    """A loaded export source: the model to call (the delta applied, unmerged) and its parts."""

    base: str  # the base model's embedded name or directory
    model: nn.Module  # what to export: the native base with the delta applied, if any
    tokenizer: Tokenizer
    delta: DeltaMethod | None  # the trained delta (None: a plain model)
    origin: str  # SOURCE as given


def _recorded_base(directory: Path) -> str | None:
    """The base a delta directory names: lmforge's delta_config.json or peft's config."""
    for name, read in (
        (DELTA_CONFIG, lambda d: (d.get("base") or {}).get("name_or_path")),
        (PEFT_CONFIG, lambda d: d.get("base_model_name_or_path")),
    ):
        path = directory / name
        if path.is_file():
            try:
                return read(json.loads(path.read_text(encoding="utf-8"))) or None
            except (OSError, ValueError, AttributeError) as e:
                raise CheckpointError(f"{path}: unreadable ({e})") from None
    return None


def _run_base(run: Path) -> str | None:
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{run / 'config.yaml'}: unreadable ({e})") from None
    return config.get("model") if isinstance(config, dict) else None


def locate(source: str, base: str = "") -> tuple[str, Path | None]:
    """(base model, delta directory or None) for SOURCE (see the module docstring)."""
    path = Path(source).expanduser()
    if source in EMBEDDED or (path / "config.json").is_file():
        return source, None
    if (path / "model" / "config.json").is_file():
        return str(path / "model"), None
    if (path / "delta" / DELTA_CONFIG).is_file():
        found = base or _run_base(path)
        delta = path / "delta"
    elif (path / DELTA_CONFIG).is_file() or (path / PEFT_CONFIG).is_file():
        found, delta = base or _recorded_base(path), path
    else:
        raise ConfigError(
            f"{source} is neither an embedded model ({', '.join(EMBEDDED.names())}), a model "
            "directory, a run directory nor a delta/peft adapter directory; give one of those"
        )
    if not found:
        raise ConfigError(f"{delta} does not record its base model", fix="name it: {base=MODEL}")
    return found, delta


def open_source(source: str, base: str = "", force: bool = False) -> Source:
    """Load SOURCE natively; a delta is applied (not merged) to its base."""
    base_name, delta_dir = locate(source, base)
    model = load_model(base_name, backend="native")
    tokenizer = load_tokenizer(base_name)
    if delta_dir is None:
        return Source(base_name, model, tokenizer, None, source)
    delta = load_adapter(delta_dir, model, force=force)
    return Source(base_name, delta.model.eval(), tokenizer, delta, source)


def base_directory(name: str) -> Path:
    """The transformers directory holding a base's tokenizer files (an embedded model's cache)."""
    return resolve(name)
