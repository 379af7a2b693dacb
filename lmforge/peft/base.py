"""The delta-tuning contract: every parameter-efficient method has the same small surface.

The handbook sorts the methods in three families, and so does the code:

    family              methods                                   what changes in the model
    addition            adapter, prefix, prompt, ptuning, ptuning2 new modules or virtual tokens
    specification       bitfit (and named parameters)              a chosen subset is unfrozen
    reparameterization  lora, qlora                                low-rank re-parameterized updates

    method = METHODS.get("lora")(LoraConfig(r=8))
    model = method.apply(model, seed=0)  # inject (initialised from the seed), freeze the rest
    ... train model (only method.trainable_parameters() have requires_grad) ...
    method.merge(); method.unmerge()     # where the method allows it
    method.save("run/delta")             # the method's own weights, its config, its base's id
    method = load_delta("run/delta", base_model)   # refused on another base unless force=True

Methods inject by replacing or wrapping leaf modules (or, for virtual tokens, by
wrapping the model's input), never by subclassing the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write, atomic_write_json
from lmforge.config import from_dict, to_dict
from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.host import find_host
from lmforge.registry import Registry

Family = Literal["addition", "specification", "reparameterization"]
CONFIG_FILE = "delta_config.json"
WEIGHTS_FILE = "delta_model.safetensors"


class DeltaMethod:
    """Base of every method. Subclasses set `name`, `family`, `Config` and implement `inject`."""

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
        self.base: dict[str, str] | None = None  # the identity of the model it was applied to

    def apply(self, model: nn.Module, seed: int | None = None) -> nn.Module:
        """Freeze `model`, inject the method, return the model to train and call. With a
        seed, the method's random initialisation draws from it, not from torch's global
        generator, so two runs with the same seed start from the same delta."""
        self.base = base_identity(model)
        with seeded(seed, model):
            return self.inject(model)

    # ── what each method provides ────────────────────────────────────────────────────────
    def inject(self, model: nn.Module) -> nn.Module:
        """Freeze `model`, insert the method's modules, set and return `self.model`."""
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
        atomic_write_json(directory / CONFIG_FILE, self.meta(self.config))
        return directory

    def meta(self, config: Any) -> dict[str, Any]:
        """What delta_config.json holds besides the weights."""
        meta = {"method": self.name, "family": self.family, "config": to_dict(config)}
        return {**meta, "base": self.base} if self.base else meta


METHODS: Registry[type[DeltaMethod]] = Registry("delta method")


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared tensors once and a quantized layer's weight as the
    in × out parameters it stands for (its packed codes are buffers)."""
    unique = {id(p): p for p in model.parameters()}.values()
    packed = sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "qweight"))
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return trainable, sum(p.numel() for p in unique) + packed


def register(cls: type[DeltaMethod]) -> type[DeltaMethod]:
    """Class decorator: add a method to METHODS under its `name`."""
    return METHODS.register(cls.name)(cls)


def build(method: str, config: dict[str, Any] | Any | None = None) -> DeltaMethod:
    """A method by name with its config given as a dataclass or a mapping of fields."""
    cls = METHODS.get(method)
    if isinstance(config, dict) or config is None:
        config = from_dict(cls.Config, config or {}, method)
    return cls(config)


def apply(
    model: nn.Module,
    method: str,
    config: dict[str, Any] | Any | None = None,
    seed: int | None = None,
) -> DeltaMethod:
    """Apply a method to `model`; the result's `.model` is what to train and call."""
    delta = build(method, config)
    delta.apply(model, seed=seed)
    return delta


def read_delta(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A saved delta's delta_config.json (method, config, base) and its tensors."""
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
    return meta, state


def load_delta(directory: str | Path, model: nn.Module, force: bool = False) -> DeltaMethod:
    """Re-create a saved method on `model`, which must be the base it was trained on (the
    identity saved with it) unless `force`."""
    directory = Path(directory)
    meta, state = read_delta(directory)
    config = meta["config"]
    if meta["method"] in METHODS and isinstance(config, dict):
        config = {**METHODS.get(meta["method"]).saved_before, **config}
    if not force:
        check_base(meta.get("base"), model, str(directory / CONFIG_FILE))
    delta = build(meta["method"], config)
    delta.apply(model)
    delta.load_state_dict(state, origin=str(directory / WEIGHTS_FILE))
    return delta


# ── which base a delta belongs to ─────────────────────────────────────────────────────────


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def base_identity(model: nn.Module) -> dict[str, str] | None:
    """Name, shape hash and weight hash of a base model (None for a model of neither kind).
    The weights hashed are a few embedding rows and the final norm, which no method changes,
    rounded to bfloat16 so that a base whose embedding is stored in 16 bits (QLoRA) is the
    same base."""
    host = find_host(model)
    if host is None:
        return None
    embedding = host.embeddings().weight.detach()
    V = embedding.shape[0]
    rows = [embedding[i, :32] for i in sorted({0, V // 2, V - 1})]
    norm = getattr(host.final_norm(), "weight", None)  # a wrapped norm may hold none itself
    parts = [*rows] if norm is None else [*rows, norm.detach()[:64]]
    sample = torch.cat(parts).float().cpu()
    sample = sample.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    shape = json.dumps({**dataclasses.asdict(host.geometry()), "vocab": V}, sort_keys=True)
    name = getattr(host.plain, "name_or_path", "") or ""
    return {
        "name_or_path": str(name),
        "config": _digest(shape.encode()),
        "weights": _digest(sample),
    }


def check_base(saved: dict[str, str] | None, model: nn.Module, origin: str) -> None:
    """Refuse a delta saved on another base (a delta saved without an identity passes)."""
    now = base_identity(model)
    if not saved or now is None:
        return
    for key, what in (("config", "a model of another shape"), ("weights", "other weights")):
        if saved.get(key) != now[key]:
            theirs = saved.get("name_or_path") or "(unnamed)"
            ours = now["name_or_path"] or "(unnamed)"
            raise CheckpointError(
                f"{origin}: this delta was trained on {theirs!r} ({key} {saved.get(key)}); the "
                f"model given is {ours!r} ({key} {now[key]}), {what}",
                fix="load the base it was trained on, or pass {force=true} to apply it anyway",
            )


@contextlib.contextmanager
def seeded(seed: int | None, model: nn.Module) -> Iterator[None]:
    """Within the block, torch's generators (CPU, and the model's CUDA device) start from
    `seed`; afterwards they are as before. No seed: nothing changes."""
    if seed is None:
        yield
        return
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def config_fields(cls: type[DeltaMethod]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls.Config)]
