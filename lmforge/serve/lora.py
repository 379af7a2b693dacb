"""Many LoRA adapters in one batch: each token reads its own adapter's A and B.

    y_t = W x_t + B[s_t] (A[s_t] x_t)        s_t: the adapter slot of token t (0 = none)

        x (N, in) ──► W ───────────────────────────────┐
           │                                          (+) ──► y (N, out)
           └─► gather A[s] (N, r, in) ─► bmm ─► gather B[s] (N, out, r) ─► bmm ┘

The base weight is read once for the whole batch; the low-rank products are gathered per token
(the batched-gather form of S-LoRA and Punica, Sheng et al. 2023, Chen et al. 2023), so a
batch mixing eight adapters costs two small batched products per layer, not eight. Every
adapter lives in a slot of stacked tensors, zero-padded to the largest rank (exact: the
padded rows and columns add zeros), with its scaling folded into B; slot 0 stays zero.

`AdapterStore` keeps the registered adapters (name → directory) and loads them into slots on
demand, evicting the least recently used idle one when the slots are full; the number of
slots follows from a memory budget. Virtual-token adapters need no slot: each is the KV-cache
prefix of serve/virtual.py, computed when the store is made.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.model.host import float_placement
from lmforge.model.targets import replace_module
from lmforge.peft import build
from lmforge.peft.base import check_base, read_delta
from lmforge.peft.interop import adapter_kind, read_peft_lora
from lmforge.peft.lora import LoraConfig
from lmforge.serve.virtual import KVPrefix, is_virtual, kv_prefix


class SlotIndex:
    """The adapter slot of every token of the current step, shared by all batched layers."""

    def __init__(self) -> None:
        self.index: Tensor | None = None  # (N,) slots; None: no adapter in this step


class BatchedLoraLinear(nn.Module):
    """A linear-like base plus the LoRA products of whichever adapter each token names."""

    def __init__(self, base: nn.Module, slots: int, rank: int, shared: SlotIndex) -> None:
        super().__init__()
        device, dtype = float_placement(base)
        self.base_layer = base
        self.shared = shared
        self.register_buffer(
            "A", torch.zeros(slots, rank, base.in_features, device=device, dtype=dtype)
        )
        self.register_buffer(
            "B", torch.zeros(slots, base.out_features, rank, device=device, dtype=dtype)
        )

    def load(self, slot: int, a: Tensor, b: Tensor, scaling: float) -> None:
        """Put an adapter's A (r, in) and B (out, r) into `slot` (scaling folded into B)."""
        self.A[slot].zero_()
        self.B[slot].zero_()
        r = a.shape[0]
        self.A[slot, :r] = a.to(self.A.dtype)
        self.B[slot, :, :r] = b.to(self.B.dtype) * scaling

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., out)
        index = self.shared.index
        if index is None:
            return y
        flat = x.reshape(-1, x.shape[-1], 1)  # (N, in, 1)
        h = torch.bmm(self.A[index], flat)  # (N, r, 1)
        delta = torch.bmm(self.B[index], h)  # (N, out, 1)
        return y + delta.view(y.shape)


def read_lora(path: str | Path) -> tuple[LoraConfig, dict[str, Tensor], dict | None]:
    """A LoRA delta's config, tensors by parameter name and recorded base (None: not recorded)
    from an lmforge delta, a finetune run directory or a peft adapter."""
    directory, kind = adapter_kind(path)
    if kind not in ("lora", "LORA"):
        raise ConfigError(
            f"{directory}: a {kind} adapter; the server batches LoRA adapters and serves "
            "virtual-token ones as cache prefixes (merge others into the base with "
            "lmforge export --format merged)"
        )
    if kind == "LORA":
        config, state = read_peft_lora(directory)
        return config, state, None
    meta, state = read_delta(directory)
    return build("lora", meta["config"]).config, state, meta.get("base")


def lora_pairs(state: dict[str, Tensor], path: str) -> dict[str, tuple[Tensor, Tensor]]:
    """module name → (A, B) from `...lora_A.weight` / `...lora_B.weight` tensors."""
    pairs = {}
    for name in state:
        if name.endswith(".lora_A.weight"):
            module = name[: -len(".lora_A.weight")]
            b = state.get(f"{module}.lora_B.weight")
            if b is None:
                raise CheckpointError(f"{path}: {module}.lora_B.weight is missing")
            pairs[module] = (state[name], b)
    return pairs


class AdapterStore:
    """Registered adapters: LoRA ones loaded into slots of batched layers on demand (LRU),
    virtual-token ones as the KV-cache prefix they put before every prompt (serve/virtual.py)."""

    def __init__(
        self,
        model: nn.Module,
        paths: dict[str, str],
        budget_mb: float = 64.0,
        max_slots: int = 8,
        force: bool = False,
    ) -> None:
        self.model, self.paths = model, dict(paths)
        self.shared = SlotIndex()
        virtual = [name for name, path in self.paths.items() if is_virtual(path)]
        self.prefixes = {name: kv_prefix(model, self.paths[name], force) for name in virtual}
        read = {n: read_lora(p) for n, p in self.paths.items() if n not in self.prefixes}
        for name, (_, _, base) in read.items():
            if not force:
                check_base(base, model, str(Path(self.paths[name])))
        modules = sorted({m for _, state, _ in read.values() for m in lora_pairs(state, "")})
        rank = max((config.r for config, _, _ in read.values()), default=1)
        per_slot = sum(
            rank * (model.get_submodule(m).in_features + model.get_submodule(m).out_features) * 4
            for m in modules
        )
        self.slots = max(1, min(max_slots, int(budget_mb * 2**20) // max(per_slot, 1)))
        self.layers: dict[str, BatchedLoraLinear] = {}
        for m in modules:
            layer = BatchedLoraLinear(model.get_submodule(m), self.slots + 1, rank, self.shared)
            replace_module(model, m, layer)
            self.layers[m] = layer
        self.loaded: OrderedDict[str, int] = OrderedDict()  # name → slot, least recent first
        self.users: dict[str, int] = {}
        self.loads = 0  # adapters read from disk (counts reloads after eviction)

    def names(self) -> list[str]:
        return sorted(self.paths)

    def prefix(self, name: str) -> KVPrefix | None:
        """The virtual columns adapter `name` puts before every prompt (None: it has none)."""
        return self.prefixes.get(name)

    def acquire(self, name: str) -> int | None:
        """The slot of adapter `name` for a request (loading it if needed); 0 for the base
        and for virtual-token adapters; None when every slot is held by running requests."""
        if not name:
            return 0
        if name not in self.paths:
            raise ConfigError(f"unknown adapter {name!r}; served: {', '.join(self.names())}")
        if name in self.prefixes:
            self.users[name] = self.users.get(name, 0) + 1
            return 0
        if name not in self.loaded:
            slot = self._free_slot()
            if slot is None:
                return None
            self._load(name, slot)
        self.loaded.move_to_end(name)
        self.users[name] = self.users.get(name, 0) + 1
        return self.loaded[name]

    def release(self, name: str) -> None:
        if name:
            self.users[name] -= 1

    def _free_slot(self) -> int | None:
        taken = set(self.loaded.values())
        for slot in range(1, self.slots + 1):
            if slot not in taken:
                return slot
        for name, slot in self.loaded.items():  # least recently used first
            if not self.users.get(name):
                del self.loaded[name]
                return slot
        return None

    def _load(self, name: str, slot: int) -> None:
        config, state, _ = read_lora(self.paths[name])
        for module, (a, b) in lora_pairs(state, self.paths[name]).items():
            self.layers[module].load(slot, a, b, config.scaling)
        for module, layer in self.layers.items():
            if not any(k.startswith(f"{module}.") for k in state):
                layer.A[slot].zero_()
                layer.B[slot].zero_()
        self.loaded[name] = slot
        self.loads += 1

    def bind(self, slots: Tensor) -> None:
        """Set the slot of every token of the next forward (no adapter: the plain path)."""
        self.shared.index = slots if bool(slots.any()) else None


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`NAME=PATH` items (the --adapter flags) → {name: path}."""
    adapters = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or ":" in name:
            raise ConfigError(
                f"adapter {spec!r} is not NAME=PATH",
                fix="write it as {adapters=sql=runs/ft-sql} (a name without ':')",
            )
        adapters[name] = path
    return adapters
