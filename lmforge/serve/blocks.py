"""Which KV-cache blocks each sequence holds, and prefix caching of full prompt blocks.

    free ─allocate─► held (refcount ≥ 1) ─release─┬─► free            (never cached)
                         ▲                        └─► evictable (LRU)  (a cached prefix block)
                         └──────── match_prefix ◄─────────┘ reused by a later prompt

A full block of prompt tokens is identified by a chained hash of everything before it and its
own tokens (and the adapter, whose keys differ): two prompts that share a system prompt share
those blocks' hashes, so the second reads the first's keys and values instead of computing
them (Zheng et al., 2023, SGLang; vLLM's automatic prefix caching). A cached block whose last
reader finished stays until memory is needed, then the least recently used one goes first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass


def block_hash(parent: bytes, tokens: list[int], salt: str) -> bytes:
    """The identity of a full block: its tokens after everything `parent` stands for."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(salt.encode())
    digest.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return digest.digest()


@dataclass
class PrefixStats:
    queried_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # prompt tokens whose keys/values were found cached


class BlockManager:
    """Block ids 0..num_blocks-1 with reference counts, a free list and a prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.prefix_caching = prefix_caching
        self.free: deque[int] = deque(range(num_blocks))
        self.refs = [0] * num_blocks
        self.cached: dict[bytes, int] = {}  # block hash → block id
        self.hash_of: dict[int, bytes] = {}  # block id → its hash while cached
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; LRU
        self.stats = PrefixStats()

    def available(self) -> int:
        """Blocks that an allocation can take (free or evictable)."""
        return len(self.free) + len(self.evictable)

    def used(self) -> int:
        """Blocks referenced by a running sequence."""
        return self.num_blocks - self.available()

    def allocate(self) -> int:
        if self.free:
            block = self.free.popleft()
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)  # least recently used
            del self.cached[self.hash_of.pop(block)]
        else:
            raise MemoryError("no KV-cache block left")
        self.refs[block] = 1
        return block

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.hash_of:
                    self.evictable[block] = None  # most recently used end
                else:
                    self.free.append(block)

    def match_prefix(self, tokens: list[int], salt: str) -> tuple[list[int], list[bytes]]:
        """The cached blocks that begin `tokens` (each now referenced once more) and the chain
        of hashes of every full block of `tokens`. At least one token is left uncached, so the
        last prompt token is always computed (its logits start the reply)."""
        bs = self.block_size
        hashes, parent = [], b""
        for start in range(0, len(tokens) - bs + 1, bs):
            parent = block_hash(parent, tokens[start : start + bs], salt)
            hashes.append(parent)
        hits: list[int] = []
        if self.prefix_caching:
            for h in hashes[: (len(tokens) - 1) // bs]:
                block = self.cached.get(h)
                if block is None:
                    break
                if self.refs[block] == 0:
                    del self.evictable[block]
                self.refs[block] += 1
                hits.append(block)
        return hits, hashes

    def register(self, block: int, h: bytes) -> None:
        """Record that `block` holds the full prompt block `h` (a later prompt may reuse it)."""
        if self.prefix_caching and h not in self.cached and block not in self.hash_of:
            self.cached[h] = block
            self.hash_of[block] = h
