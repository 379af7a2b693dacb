"""Paging for optimizer state: fixed-size fp32 pages, an LRU set in RAM, a memory-mapped file.

    Layout      places each tensor's segments (m and v of the same elements, side by side)
    PageFile    the preallocated, memory-mapped page file (created, grown, removed)
    PageStore   resident pages under a budget; the least recently used is evicted

See paged.py for the picture and the optimizer built on them.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lmforge.errors import ConfigError

PAGE_BYTES = 1 << 20  # 1 MiB
FLOAT_BYTES = 4


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------- layout


class Segment(NamedTuple):
    """Elements [start, start + count) of a flattened parameter, stored in one page."""

    page: int  # page index
    offset: int  # m at page[offset : offset + count], v right after it
    start: int
    count: int


class Layout:
    """Places parameters' segments into pages, first fit from a cursor."""

    def __init__(self, page_numel: int) -> None:
        self.page_numel = page_numel
        self.page, self.used = 0, 0  # the current page and floats used in it

    @property
    def n_pages(self) -> int:
        return self.page + (1 if self.used else 0)

    def place(self, n: int) -> list[Segment]:
        """Segments for a tensor of n elements (2n floats: m and v)."""
        size = self.page_numel
        if 2 * n <= size and self.used + 2 * n > size:  # a small tensor never straddles pages
            self.page, self.used = self.page + 1, 0
        segments, start = [], 0
        while start < n:
            if size - self.used < 2:
                self.page, self.used = self.page + 1, 0
            count = min(n - start, (size - self.used) // 2)
            segments.append(Segment(self.page, self.used, start, count))
            self.used += 2 * count
            start += count
        return segments


# ---------------------------------------------------------------- the page file


def _release(handles: dict[str, Any]) -> None:
    """Unmap, close and delete the page file (runs once: close(), GC or interpreter exit)."""
    if handles.get("mm") is not None:
        handles["mm"].close()
    os.close(handles["fd"])
    Path(handles["path"]).unlink(missing_ok=True)


def _reserve(fd: int, old: int, new: int, directory: Path) -> None:
    """Grow the file to `new` bytes and make the disk hold them now (ENOSPC here, not later)."""
    os.ftruncate(fd, new)
    try:
        os.posix_fallocate(fd, old, new - old)
        return
    except AttributeError:  # no posix_fallocate (macOS): compare with the free space instead
        pass
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    if shutil.disk_usage(directory).free < new - old:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class PageFile:
    """A preallocated scratch file of `n_pages` pages of `page_bytes`, memory-mapped."""

    def __init__(self, directory: Path, page_bytes: int, n_pages: int) -> None:
        self.directory, self.page_bytes, self.n_pages = directory, page_bytes, 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(
                prefix="lmforge-paged-adamw-", suffix=".pages", dir=directory
            )
        except OSError as e:
            raise ConfigError(
                f"PagedAdamW: cannot create the page file in page_dir {directory} "
                f"({e.strerror or e}); make that directory writable or pass page_dir= "
                "a writable directory on a local disk"
            ) from e
        self.path = Path(path)
        self._handles: dict[str, Any] = {"fd": fd, "path": path, "mm": None}
        self._finalizer = weakref.finalize(self, _release, self._handles)
        self.resize(n_pages)

    def resize(self, n_pages: int) -> None:
        """Grow to at least `n_pages` pages (never shrinks; existing pages keep their bytes)."""
        n_pages = max(n_pages, 1)  # mmap refuses an empty file
        if n_pages <= self.n_pages:
            return
        old, new = self.n_pages * self.page_bytes, n_pages * self.page_bytes
        if self._handles["mm"] is not None:
            self._handles["mm"].close()
            self._handles["mm"] = None
        try:
            _reserve(self._handles["fd"], old, new, self.directory)
        except OSError as e:
            free = shutil.disk_usage(self.directory).free
            if old:  # growing: keep the pages we have, as they were
                os.ftruncate(self._handles["fd"], old)
                self._handles["mm"] = mmap.mmap(self._handles["fd"], old)
            else:
                self.close()
            raise ConfigError(
                f"PagedAdamW: cannot reserve {_mib(new)} for the page file in page_dir "
                f"{self.directory} ({e.strerror or e}; {_mib(free)} free); free disk space "
                "there or pass page_dir= a directory on a disk with room"
            ) from e
        self._handles["mm"] = mmap.mmap(self._handles["fd"], new)
        self.n_pages = n_pages

    def _view(self, index: int) -> Tensor:
        numel = self.page_bytes // FLOAT_BYTES
        mm = self._handles["mm"]
        return torch.frombuffer(
            mm, dtype=torch.float32, count=numel, offset=index * self.page_bytes
        )

    def _drop(self, index: int) -> None:
        if hasattr(mmap, "MADV_DONTNEED"):  # out of this process's RSS; the file keeps the bytes
            self._handles["mm"].madvise(
                mmap.MADV_DONTNEED, index * self.page_bytes, self.page_bytes
            )

    def read(self, index: int) -> Tensor:
        """A RAM copy of page `index`: (page_bytes / 4,) fp32."""
        page = self._view(index).clone()
        self._drop(index)
        return page

    def write(self, index: int, page: Tensor) -> None:
        self._view(index).copy_(page)
        self._drop(index)

    def close(self) -> None:
        self._finalizer()


# ---------------------------------------------------------------- resident pages


class PageStore:
    """Pages in RAM, at most `max_pages`, least recently used evicted to the page file."""

    def __init__(self, file: PageFile, max_pages: int) -> None:
        self.file, self.max_pages = file, max_pages
        self.resident: OrderedDict[int, Tensor] = OrderedDict()  # page index → (page_numel,)
        self.dirty: set[int] = set()
        self.page_ins = self.evictions = self.writebacks = 0

    def page(self, index: int, *, write: bool) -> Tensor:
        """Page `index`, paged in if needed; `write` marks it to be written back on eviction."""
        page = self.resident.get(index)
        if page is None:
            while len(self.resident) >= self.max_pages:
                self._evict()
            page = self.resident[index] = self.file.read(index)
            self.page_ins += 1
        else:
            self.resident.move_to_end(index)
        if write:
            self.dirty.add(index)
        return page

    def _evict(self) -> None:
        index, page = self.resident.popitem(last=False)
        if index in self.dirty:
            self.file.write(index, page)
            self.dirty.discard(index)
            self.writebacks += 1
        self.evictions += 1

    def zero(self) -> None:
        """Every page all zeros (the state of a fresh optimizer)."""
        self.resident.clear()
        self.dirty.clear()
        zeros = torch.zeros(self.file.page_bytes // FLOAT_BYTES)
        for index in range(self.file.n_pages):
            self.file.write(index, zeros)


@dataclass(frozen=True)
class PagingStats:
    """Counters of a PagedAdamW (evictions, page_ins, writebacks count since construction)."""

    pages: int
    page_bytes: int
    resident_pages: int
    resident_bytes: int
    max_resident_bytes: int
    page_ins: int
    evictions: int
    writebacks: int
    page_file: str
