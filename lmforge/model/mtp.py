"""Multi-token prediction heads (Gloeckle et al. 2024): extra blocks on the shared trunk.

    trunk h ─► norm ─► lm_head                      head 1 predicts token t+1 (the model itself)
          ├─► Block₂ ─► norm ─► lm_head             head 2 predicts token t+2
          ┆
          └─► Blockₙ ─► norm ─► lm_head             head n predicts token t+n

Every head shares the trunk, the final norm and the (tied) output matrix; head j ≥ 2 adds one
transformer block of its own. The heads hang on the model as `model.mtp_heads`, so training
checkpoints carry them, but `CausalLM.forward` never calls them: inference is head 1, and the
exported transformers directory is a plain Llama. The extra blocks are saved beside its
weights in `mtp_heads.safetensors` (HEADS_FILE; its metadata holds n_future), a file
transformers ignores and `load_hf_dir` attaches again.
"""

from __future__ import annotations

import math
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from lmforge.errors import CheckpointError
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import Block, CausalLM, Trunk

HEADS_FILE = "mtp_heads.safetensors"
PREFIX = "mtp_heads."


class MultiTokenHeads(nn.Module):
    """The blocks of heads 2..n_future, initialised as the model's own blocks are."""

    def __init__(self, config: ModelConfig, n_future: int) -> None:
        super().__init__()
        self.n_future = n_future
        self.blocks = nn.ModuleList(Block(config, config.n_layer + i) for i in range(n_future - 1))
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm gains stay at one
            std = config.init_std
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std /= math.sqrt(2 * config.n_layer)
            nn.init.normal_(p, std=std)

    def hidden(self, trunk: Trunk, j: int) -> Tensor:
        """The hidden state head j (1-based) reads before the final norm, (B, T, d)."""
        if j == 1:
            return trunk.hidden
        return self.blocks[j - 2](trunk.hidden, trunk.cos, trunk.sin, trunk.mask, None)


def attach_heads(model: CausalLM, n_future: int) -> MultiTokenHeads:
    """Give `model` heads for tokens t+1..t+n_future (kept when it already has as many)."""
    heads = getattr(model, "mtp_heads", None)
    if isinstance(heads, MultiTokenHeads) and heads.n_future == n_future:
        return heads
    weight = model.lm_head.weight
    heads = MultiTokenHeads(model.config, n_future).to(device=weight.device, dtype=weight.dtype)
    model.mtp_heads = heads
    return heads


def head_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The multi-token heads' entries of a model state dict, without their prefix."""
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def save_heads(tensors: dict[str, Tensor], n_future: int, directory: Path) -> None:
    """Write the heads' tensors (names without the prefix) to directory/HEADS_FILE."""
    plain = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    save_file(plain, str(directory / HEADS_FILE), {"format": "pt", "n_future": str(n_future)})


def load_heads(model: CausalLM, directory: Path) -> MultiTokenHeads | None:
    """Attach the heads saved in directory/HEADS_FILE, if there is one."""
    path = directory / HEADS_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            n_future = int((f.metadata() or {})["n_future"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a file of multi-token heads ({e})") from None
    heads = attach_heads(model, n_future)
    differ = sorted(set(heads.state_dict()) ^ set(tensors))
    if differ:
        raise CheckpointError(
            f"{path}: tensor {differ[0]!r} does not belong to {n_future - 1} head blocks of "
            "this model; export the model again"
        )
    heads.load_state_dict({k: v.to(model.lm_head.weight.dtype) for k, v in tensors.items()})
    return heads
