"""One entry point for every saved delta: `load_adapter(path, model)`.

    path/                          what it holds                      read by
    ├─ delta_config.json           a delta saved by lmforge           base.load_delta
    ├─ delta/delta_config.json     a `lmforge finetune` run directory  base.load_delta
    └─ adapter_config.json         a Hugging Face PEFT adapter         interop/lora, interop/virtual

`lmforge generate|chat|eval --adapter PATH` all come through here.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from lmforge.errors import CheckpointError
from lmforge.peft.base import CONFIG_FILE, DeltaMethod, load_delta
from lmforge.peft.interop.lora import load_peft_lora
from lmforge.peft.interop.virtual import load_peft_virtual


def _field(config: Path, field: str) -> str:
    try:
        return str(json.loads(config.read_text(encoding="utf-8"))[field])
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"{config}: unreadable or without {field} ({e})") from None


def adapter_kind(path: str | Path) -> tuple[Path, str]:
    """What the adapter at `path` is: (the directory to read, and its kind: the lmforge method
    name of a saved delta, or peft's `peft_type` such as "LORA" or "PROMPT_TUNING")."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"adapter {directory} does not exist or is not a directory")
    for delta in (directory, directory / "delta"):
        if (delta / CONFIG_FILE).exists():
            return delta, _field(delta / CONFIG_FILE, "method")
    if (directory / "adapter_config.json").exists():
        return directory, _field(directory / "adapter_config.json", "peft_type")
    raise CheckpointError(
        f"{directory} holds no adapter: expected {CONFIG_FILE} (a saved delta), "
        f"delta/{CONFIG_FILE} (a finetune run directory) or adapter_config.json (peft)"
    )


def load_adapter(path: str | Path, model: nn.Module, force: bool = False) -> DeltaMethod:
    """Apply the delta saved at `path` (see the module docstring) to `model`; a delta saved
    by lmforge is refused on another base than its own unless `force`."""
    directory, kind = adapter_kind(path)
    if (directory / CONFIG_FILE).exists():
        return load_delta(directory, model, force)
    if kind == "LORA":
        return load_peft_lora(directory, model)
    return load_peft_virtual(directory, model)
