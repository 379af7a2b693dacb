"""Paged AdamW: fp32 moments in fixed-size pages, at most `max_resident_bytes` of them in RAM.

bitsandbytes' paged optimizers (QLoRA, Dettmers et al. 2023, arXiv:2305.14314) put the state in
CUDA unified memory and let the driver page it out under memory pressure. Here the paging is
explicit and on the host, so it works on a CPU and can be counted:

    RAM: resident pages, LRU order              page_dir/lmforge-paged-adamw-*.pages (mmap)
    +--------+--------+--------+   evict: LRU page,   +----+----+----+----+----+----+
    | page 5 | page 0 | page 2 |   written if dirty   | p0 | p1 | p2 | p3 | p4 | p5 |
    +--------+--------+--------+  ----------------->  +----+----+----+----+----+----+
       <= max_resident_bytes      <-----------------   preallocated: a full disk fails
                                  page in: when a      in the constructor, not mid-run
                                  parameter updates

    page (page_bytes / 4 fp32): [ m_a | v_a | m_b | v_b | ... ]   segments, side by side

Each parameter is cut into segments; a segment holds m and then v of the same elements, so an
update touches each page once: page it in (evicting the least recently used page when the
budget is full), run the AdamW ops on the segment's slices in place, mark the page dirty. A
tensor that fits in a page never straddles two. AdamW is elementwise and ATen computes an
element the same way whatever slice it is in, so the updates are bit-identical to
torch.optim.AdamW's (tests check torch.equal with evictions happening).

The page file is removed by `close()`, when the optimizer is garbage-collected, or at exit.
After a page moves in or out its file range is dropped from this process (madvise DONTNEED),
so resident memory is the pages alone. Put page_dir on a disk: on tmpfs the "file" is RAM.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError
from lmforge.train.optim.adamw import AdamWBase, Hyper, Params, adamw_update_
from lmforge.train.optim.page_store import (
    FLOAT_BYTES,
    PAGE_BYTES,
    Layout,
    PageFile,
    PageStore,
    PagingStats,
    Segment,
)

MAX_RESIDENT_BYTES = 256 << 20  # 256 MiB


class PagedAdamW(AdamWBase):
    """AdamW whose fp32 moments live in pages under a RAM budget, spilling to a page file.

    Same constructor and defaults as torch.optim.AdamW (lr, betas, eps, weight_decay), plus
    page_bytes (page size, a multiple of the OS page size), max_resident_bytes (RAM budget for
    pages, at least one page) and page_dir (where the page file goes; default: the temp dir).
    The page file is created and reserved here, so a bad page_dir fails before training starts.

    state_dict() has torch.optim.AdamW's format (step, exp_avg, exp_avg_sq), so the two load
    each other's state. Pages are host memory: a parameter on an accelerator has each segment
    copied to its device for the update and back.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        page_bytes: int = PAGE_BYTES,
        max_resident_bytes: int = MAX_RESIDENT_BYTES,
        page_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if page_bytes <= 0 or page_bytes % mmap.PAGESIZE:
            raise ConfigError(
                f"PagedAdamW: page_bytes={page_bytes} must be a positive multiple of the OS "
                f"page size ({mmap.PAGESIZE} bytes), e.g. {PAGE_BYTES} (1 MiB)"
            )
        if max_resident_bytes < page_bytes:
            raise ConfigError(
                f"PagedAdamW: max_resident_bytes={max_resident_bytes} must hold at least one "
                f"page (page_bytes={page_bytes}); raise it or use smaller pages"
            )
        self._layout = Layout(page_bytes // FLOAT_BYTES)
        self._segments: dict[Tensor, list[Segment]] = {}
        self._file: PageFile | None = None
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        directory = Path(page_dir) if page_dir is not None else Path(tempfile.gettempdir())
        self._file = PageFile(directory, page_bytes, self._layout.n_pages)
        self._store: PageStore | None = PageStore(self._file, max_resident_bytes // page_bytes)
        self.max_resident_bytes = max_resident_bytes

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's rules) and place its parameters' state in pages."""
        cursor = (self._layout.page, self._layout.used)
        super().add_param_group(param_group)
        params = self.param_groups[-1]["params"]
        for p in params:
            self._segments[p] = self._layout.place(p.numel())
        if self._file is None:  # still in the constructor, which creates the file
            return
        try:  # a group added later grows the file; if it cannot, the group is not added
            self._file.resize(self._layout.n_pages)
        except ConfigError:
            self.param_groups.pop()
            for p in params:
                del self._segments[p]
            self._layout.page, self._layout.used = cursor
            raise

    # ------------------------------------------------------------ the update

    def _pages(self) -> PageStore:
        if self._store is None:
            raise RuntimeError("PagedAdamW was closed; its page file is gone")
        return self._store

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        """Nothing to allocate: a parameter's moments are zeros in its pages until it updates."""

    def _update(self, param: Tensor, grad: Tensor, state: dict[str, Any], h: Hyper) -> None:
        store, step = self._pages(), float(state["step"])
        exact = param.dtype == torch.float32 and param.is_contiguous()
        flat = param.view(-1) if exact else param.float().reshape(-1)  # (n,) fp32
        flat_grad = grad.reshape(-1).float()  # (n,)
        for seg in self._segments[param]:
            page = store.page(seg.page, write=True)
            moments = page[seg.offset : seg.offset + 2 * seg.count]  # (2c,) m then v
            work = moments.to(param.device)  # the page itself when the param is on the host
            elements = slice(seg.start, seg.start + seg.count)
            m, v = work[: seg.count], work[seg.count :]
            adamw_update_(flat[elements], flat_grad[elements], m, v, step, h)
            if work is not moments:
                moments.copy_(work)
        if not exact:
            param.copy_(flat.view_as(param))

    # ------------------------------------------------------------ moments in and out of pages

    def _read_moments(self, param: Tensor) -> tuple[Tensor, Tensor]:
        """exp_avg and exp_avg_sq of `param` gathered from its pages (fp32, param's shape)."""
        store, n = self._pages(), param.numel()
        m, v = torch.empty(n), torch.empty(n)  # (n,) each
        for seg in self._segments[param]:
            page = store.page(seg.page, write=False)
            elements = slice(seg.start, seg.start + seg.count)
            m[elements] = page[seg.offset : seg.offset + seg.count]
            v[elements] = page[seg.offset + seg.count : seg.offset + 2 * seg.count]
        return m.view_as(param).to(param.device), v.view_as(param).to(param.device)

    def _write_moments(self, param: Tensor, m: Tensor, v: Tensor) -> None:
        store = self._pages()
        m, v = m.detach().reshape(-1).float().cpu(), v.detach().reshape(-1).float().cpu()
        for seg in self._segments[param]:
            page = store.page(seg.page, write=True)
            elements = slice(seg.start, seg.start + seg.count)
            page[seg.offset : seg.offset + seg.count] = m[elements]
            page[seg.offset + seg.count : seg.offset + 2 * seg.count] = v[elements]

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.AdamW's format: per parameter step, exp_avg, exp_avg_sq."""
        sd = super().state_dict()
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entry in sd["state"].items():
            m, v = self._read_moments(params[index])
            sd["state"][index] = {**entry, "exp_avg": m, "exp_avg_sq": v}
        return sd

    def _reset_moments(self) -> None:
        """Loading a state_dict: every moment restarts at 0 unless the state_dict has it."""
        self._pages().zero()

    def _load_entry(self, param: Tensor, entry: dict[str, Any]) -> None:
        if "exp_avg" not in entry or "exp_avg_sq" not in entry:
            raise CheckpointError(
                f"PagedAdamW state for a parameter of shape {list(param.shape)} lacks exp_avg / "
                f"exp_avg_sq (it has {sorted(entry)}); it was saved by another optimizer"
            )
        rest = {k: v for k, v in entry.items() if k not in ("exp_avg", "exp_avg_sq")}
        super()._load_entry(param, rest)
        self._write_moments(param, entry["exp_avg"], entry["exp_avg_sq"])

    # ------------------------------------------------------------ accounting and cleanup

    def state_bytes(self) -> int:
        """Bytes of the whole state, resident or paged out: every page plus the step counters."""
        assert self._file is not None
        return self._file.n_pages * self._file.page_bytes + super().state_bytes()

    def paging_stats(self) -> PagingStats:
        store, file = self._pages(), self._file
        assert file is not None
        return PagingStats(
            pages=file.n_pages,
            page_bytes=file.page_bytes,
            resident_pages=len(store.resident),
            resident_bytes=len(store.resident) * file.page_bytes,
            max_resident_bytes=self.max_resident_bytes,
            page_ins=store.page_ins,
            evictions=store.evictions,
            writebacks=store.writebacks,
            page_file=str(file.path),
        )

    @property
    def page_file(self) -> Path:
        assert self._file is not None
        return self._file.path

    def close(self) -> None:
        """Drop the pages and delete the page file; the optimizer cannot step afterwards."""
        self._store = None
        if self._file is not None:
            self._file.close()
