"""Many processes through torch.distributed: one process per device, the one loop in each.

    torchrun --nproc-per-node N -m lmforge pretrain ...     (or: lmforge pretrain --nproc N)

    rank r of N joins the process group torchrun describes (gloo on CPU, nccl on CUDA), builds
    the same model and trains on rows [r·B/N, (r+1)·B/N) of every global batch of B rows.

    train.distributed   each rank holds                          gradients
      none              the whole model (one process)            —
      ddp               the whole model and optimizer state      all-reduced (averaged) in backward
      fsdp              1/N of every parameter, gradient and     reduce-scattered; a block's
                        optimizer moment (FSDP2 `fully_shard`    parameters are all-gathered
                        on each block, then on the root)         around its forward and backward
      auto              ddp under torchrun with N > 1, else none

Loss of a global micro-batch: rank r computes the mean over its n_r loss terms and
backpropagates it scaled by N·n_r/Σn; the average over ranks that DDP and FSDP take is then
the gradient of the mean over all Σn terms, the loss one process would compute (padded or
packed rows hold unequal numbers of labels, so the ranks' own means would not do).
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lmforge.data.loader import rank_rows
from lmforge.errors import ConfigError
from lmforge.model.host import host_for
from lmforge.registry import Registry
from lmforge.train.config import PRECISIONS, TrainConfig, resolve_device
from lmforge.train.state import Batch, BatchSource

# Rank 0 may prepare data (a tokenizer, token shards) while the others wait in a barrier.
TIMEOUT = timedelta(hours=2)
BACKENDS: dict[str, str] = {"cuda": "nccl"}  # device type → process-group backend; else gloo


@dataclass(frozen=True)
class Strategy:
    """How one mode spreads a model over the ranks."""

    wrap: Callable[[nn.Module, Dist, torch.dtype | None], nn.Module]  # the module to call
    accumulate: Callable[[nn.Module, bool], AbstractContextManager]  # (wrapped, sync this pass?)
    sharded: bool  # checkpoints are written by every rank (torch.distributed.checkpoint)
    optimizers: tuple[str, ...] | None = None  # train.optimizer values it allows (None = all)
    settle: Callable[[nn.Module], None] = lambda wrapped: None  # after a forward alone


STRATEGIES: Registry[Strategy] = Registry("distributed mode")


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks, and the few collectives the loop needs."""

    mode: str  # none | ddp | fsdp (auto resolved)
    rank: int
    world: int
    device: torch.device  # cuda:LOCAL_RANK under torchrun on CUDA

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def strategy(self) -> Strategy:
        return STRATEGIES.get(self.mode)

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active and self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            dist.barrier(device_ids=ids)

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (writing caches: a tokenizer, token shards), the others
        then run it and find the caches written."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (the values themselves in one process)."""
        if not self.active or self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def agree(self, signal_number: int, stop: bool) -> tuple[int, bool]:
        """(the largest signal any rank received, whether any rank asked to stop): every rank
        takes the same decision at the same step boundary."""
        if not self.active or self.world == 1:
            return signal_number, stop
        t = torch.tensor([signal_number, int(stop)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]), bool(t[1])

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's `text` on every rank."""
        box = [text]
        if self.active and self.world > 1:
            dist.broadcast_object_list(box, src=0, device=self.device)
        return str(box[0])

    def wrap(self, model: nn.Module, precision: str) -> nn.Module:
        return self.strategy.wrap(model, self, PRECISIONS.get(precision)(self.device))

    def shard(self, data: BatchSource) -> BatchSource:
        """The source serving this rank's rows of every global batch."""
        if self.world == 1:
            return data
        shard = getattr(data, "shard", None)
        if shard is None:
            raise ConfigError(
                f"{type(data).__name__} cannot serve {self.world} processes (it has no "
                "shard(rank, world))",
                fix="train it in one process, or use a data source that shards",
            )
        shard(self.rank, self.world)
        return data

    def share_loss(self, loss: Tensor, batch: Batch) -> tuple[Tensor, float, int]:
        """(the loss to backpropagate here, the global micro-batch's mean loss, its tokens);
        see the module docstring. A non-finite loss on any rank is non-finite on all."""
        tokens = count_tokens(batch)
        if not self.active or self.world == 1:
            return loss, float(loss.detach()), tokens
        terms = loss_terms(batch)
        total_terms, total_loss, total_tokens = self.sum(
            [terms, float(loss.detach()) * terms, tokens]
        )
        mean = total_loss / total_terms if total_terms else math.nan
        return loss * (self.world * terms / max(total_terms, 1)), mean, int(total_tokens)


def count_tokens(batch: Batch) -> int:
    """The real tokens of a batch (a padding mask's ones, else every position)."""
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor) and mask.dim() == 2:
        return int(mask.sum())
    return batch["input_ids"].numel()  # no mask, or a (B, 1, T, T) mask over packed rows


def loss_terms(batch: Batch) -> int:
    """How many terms a batch's mean loss averages: the labels that follow a position (the model
    shifts them; -100 is ignored), else one per row (a classifier reads one place a row)."""
    labels = batch.get("labels")
    if isinstance(labels, Tensor):
        return int((labels[:, 1:] != -100).sum())
    return int(batch["input_ids"].shape[0])


def full_value(t: Tensor) -> float:
    """A scalar as a float; a sharded one (FSDP's gradient norm) is reduced first."""
    full = getattr(t, "full_tensor", None)
    return float(full() if full is not None else t)


# ---------------------------------------------------------------- setup


def setup(config: TrainConfig) -> Dist:
    """This process's `Dist`, joining (once) the process group torchrun's environment describes
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). ddp or fsdp without torchrun run
    as a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    mode = config.distributed
    if mode == "auto":
        mode = "ddp" if world > 1 else "none"
    if mode not in STRATEGIES:
        raise ConfigError(
            f"train.distributed {config.distributed!r} is unknown",
            fix="choose {distributed} from " + ", ".join(["auto", *STRATEGIES.names()]),
        )
    if mode == "none" and world > 1:
        raise ConfigError(
            f"this is one of {world} processes but train.distributed is none",
            fix="use {distributed=ddp} (or fsdp)",
        )
    allowed = STRATEGIES.get(mode).optimizers
    if allowed is not None and config.optimizer not in allowed:
        raise ConfigError(
            f"train.distributed {mode} shards the optimizer state of {', '.join(allowed)} only "
            f"(got {config.optimizer})",
            fix=f"use {{optimizer={allowed[0]}}}",
        )
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if mode != "none" and not dist.is_initialized():
        _join(BACKENDS.get(device.type, "gloo"), rank, world)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    rank_rows(config.batch_size, rank, world)  # refuses a global batch the ranks cannot share
    return Dist(mode, rank, world, device)


def _join(backend: str, rank: int, world: int) -> None:
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    else:  # one process without torchrun: a group of one over an in-memory store
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    atexit.register(shutdown)


def shutdown() -> None:
    """Leave the process group (at exit, or between runs in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- the three modes


def _plain(model: nn.Module, ctx: Dist, dtype: torch.dtype | None) -> nn.Module:
    return model


def _ddp(model: nn.Module, ctx: Dist, dtype: torch.dtype | None) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Buffers (RoPE tables, 4-bit codes) are the same everywhere: not re-sent every forward.
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def _fsdp(model: nn.Module, ctx: Dist, dtype: torch.dtype | None) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _broadcast_from_main(model)  # every rank keeps its slice of rank 0's weights
    policy = MixedPrecisionPolicy()
    if dtype is not None and ctx.device.type == "cuda":  # compute in bf16, reduce in fp32
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in host_for(model).blocks():
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)  # the rest: embeddings, final norm, head
    return model


def _broadcast_from_main(model: nn.Module) -> None:
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def _ddp_accumulate(wrapped: nn.Module, sync: bool) -> AbstractContextManager:
    return nullcontext() if sync else wrapped.no_sync()


@contextmanager
def _fsdp_accumulate(wrapped: nn.Module, sync: bool) -> Iterator[None]:
    wrapped.set_requires_gradient_sync(sync)
    yield


STRATEGIES.add("none", Strategy(_plain, lambda wrapped, sync: nullcontext(), sharded=False))
STRATEGIES.add("ddp", Strategy(_ddp, _ddp_accumulate, sharded=True))


def _fsdp_settle(wrapped: nn.Module) -> None:
    """Shard again the root's weights a forward without backward (validation) left gathered:
    a checkpoint then names the sharded parameters the optimizer holds."""
    wrapped.reshard()


STRATEGIES.add("fsdp", Strategy(_fsdp, _fsdp_accumulate, True, ("adamw",), _fsdp_settle))


def consolidated(model: nn.Module, build: Callable[[], nn.Module], ctx: Dist) -> nn.Module | None:
    """The trained model with whole tensors on rank 0 (None on the others): the model itself,
    unless FSDP sharded it; then `build()` (an untrained twin) filled with the gathered
    weights. Every rank must call it."""
    if ctx.mode != "fsdp":
        return model if ctx.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not ctx.is_main:
        return None
    twin = build()
    twin.load_state_dict(state)
    return twin
