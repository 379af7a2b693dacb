"""Reading a safetensors file one tensor at a time, into memory the tensor owns.

safetensors' own reader maps the whole file; every tensor it returns keeps that mapping
alive, so pages once touched stay resident until the last tensor of the file is gone. A
model that replaces most of its weights while loading (quantizing them to 4 bits) would
then still hold all the float pages. Reading each tensor with a plain `pread` gives memory
that is freed when the tensor is:

    file   [ u64 header size | JSON header: name → dtype, shape, [start, end) | data ... ]
    read   pread(end − start bytes at 8 + header size + start)  →  bytearray  →  tensor
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from torch import Tensor

from lmforge.errors import CheckpointError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """`keys()` and `get_tensor(name)` of one file, read with plain reads (see the docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{self.path} cannot be opened ({e.strerror})") from None
        size = os.fstat(self._fd).st_size
        head = os.pread(self._fd, 8, 0)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            self.close()
            raise CheckpointError(f"{self.path} is not a safetensors file (bad header size)")
        try:
            header = json.loads(os.pread(self._fd, n, 8))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self.close()
            raise CheckpointError(f"{self.path}: unreadable safetensors header ({e})") from None
        header.pop("__metadata__", None)
        try:
            end = max((e["data_offsets"][1] for e in header.values()), default=0)
        except (KeyError, TypeError, IndexError):
            self.close()
            raise CheckpointError(f"{self.path}: malformed safetensors header") from None
        if 8 + n + end > size:
            self.close()
            raise CheckpointError(
                f"{self.path} is truncated: its header describes {8 + n + end:,} bytes, the "
                f"file has {size:,}"
            )
        self._entries, self._data = header, 8 + n

    def keys(self) -> list[str]:
        return list(self._entries)

    def get_tensor(self, name: str) -> Tensor:
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype")
        buffer = bytearray(os.pread(self._fd, end - start, self._data + start))
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).view(entry["shape"])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
