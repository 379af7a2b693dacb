"""The delta-tuning contract: every parameter-efficient method has the same small surface.

The handbook sorts the methods in three families, and so does the code:

    family              methods                                   what changes in the model
    addition            adapter, prefix, prompt, ptuning, ptuning2 new modules or virtual tokens
    specification       bitfit (and named parameters)              a chosen subset is unfrozen
    reparameterization  lora, qlora                                low-rank re-parameterized updates

    method = METHODS.get("lora")(LoraConfig(r=8))
    model = method.apply(model)          # inject, freeze everything else
    ... train model (only method.trainable_parameters() have requires_grad) ...
    method.merge(); method.unmerge()     # where the method allows it
    method.save("run/delta")             # only the method's own weights + its config
    method = load_delta("run/delta", base_model)

Methods inject by replacing or wrapping leaf modules (or, for virtual tokens, by
wrapping the model's input), never by subclassing the model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.config import from_dict, to_dict
from lmforge.errors import CheckpointError, ConfigError
from lmforge.registry import Registry

Family = Literal["addition", "specification", "reparameterization"]
CONFIG_FILE = "delta_config.json"
WEIGHTS_FILE = "delta_model.safetensors"


class DeltaMethod:
    """Base of every method. Subclasses set `name`, `family`, `Config` and implement `apply`."""

    name: ClassVar[str]
    family: ClassVar[Family]
    mergeable: ClassVar[bool] = False
    identity_at_init: ClassVar[bool] = True  # output unchanged right after apply()
    # Config fields added after deltas were first saved: a saved config without one was
    # trained with this value, which may differ from today's default.
    saved_before: ClassVar[dict[str, Any]] = {}
    Config: ClassVar[type]

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        if hasattr(self.config, "validate"):
            self.config.validate()
        self.model: nn.Module | None = None
        self.merged = False

    # ── what each method provides ────────────────────────────────────────────────────────
    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze `model`, inject the method, return the model to train and call."""
        raise NotImplementedError

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of `lmforge.hub.load_model` for the base this method applies to
        (QLoRA's: quantize while loading, so the float model is never held)."""
        return {}

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The method's own parameters, by their name in the returned model."""
        if self.model is None:
            raise ConfigError(f"{self.name}: call apply(model) first")
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def merge(self) -> None:
        raise ConfigError(f"{self.name} cannot be merged into the base weights ({self.family})")

    def unmerge(self) -> None:
        raise ConfigError(f"{self.name} cannot be merged into the base weights ({self.family})")

    # ── state: only the method's own tensors ──────────────────────────────────────────────
    def state_dict(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.trainable_parameters().items()}

    def load_state_dict(self, state: dict[str, Tensor], origin: str = "state dict") -> None:
        own = self.trainable_parameters()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"{origin}: does not fit this {self.name} model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved for "
                "another model or another method configuration?"
            )
        for n, p in own.items():
            if tuple(state[n].shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{origin}: {n} has shape {list(state[n].shape)} but this model needs "
                    f"{list(p.shape)}; the delta belongs to a model of another shape"
                )
            with torch.no_grad():
                p.copy_(state[n].to(p.dtype))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        tensors = {n: t.contiguous().cpu() for n, t in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        meta = {"method": self.name, "family": self.family, "config": to_dict(self.config)}
        atomic_write_json(directory / CONFIG_FILE, meta)
        return directory


METHODS: Registry[type[DeltaMethod]] = Registry("delta method")


def register(cls: type[DeltaMethod]) -> type[DeltaMethod]:
    """Class decorator: add a method to METHODS under its `name`."""
    return METHODS.register(cls.name)(cls)


def build(method: str, config: dict[str, Any] | Any | None = None) -> DeltaMethod:
    """A method by name with its config given as a dataclass or a mapping of fields."""
    cls = METHODS.get(method)
    if isinstance(config, dict) or config is None:
        config = from_dict(cls.Config, config or {}, method)
    return cls(config)


def apply(model: nn.Module, method: str, config: dict[str, Any] | Any | None = None) -> DeltaMethod:
    """Apply a method to `model`; the result's `.model` is what to train and call."""
    delta = build(method, config)
    delta.apply(model)
    return delta


def load_delta(directory: str | Path, model: nn.Module) -> DeltaMethod:
    """Re-create a saved method on `model` (the same base it was trained on)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        state = load_file(str(directory / WEIGHTS_FILE))
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{e.filename} is missing: {directory} is not a saved delta"
        ) from None
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{directory}: the saved delta is unreadable ({e})") from None
    config = meta["config"]
    if meta["method"] in METHODS and isinstance(config, dict):
        config = {**METHODS.get(meta["method"]).saved_before, **config}
    delta = build(meta["method"], config)
    delta.apply(model)
    delta.load_state_dict(state, origin=str(directory / WEIGHTS_FILE))
    return delta


def config_fields(cls: type[DeltaMethod]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Config)]
