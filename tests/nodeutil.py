"""Build an in-process MeshNode for core tests (no servers)."""

from __future__ import annotations

import os
from pathlib import Path

from meshd.cache.pages import PageCache
from meshd.cache.readahead import ReadAhead
from meshd.core.metrics import InstrumentedStore, Metrics, Stats
from meshd.core.mounts import MountTable
from meshd.core.node import MeshNode
from meshd.metadata.kv import KV, RocksKV
from meshd.metadata.shard import MetadataCache


class NodeBox:
    """A node plus the pieces tests poke at; ``reopen()`` simulates a restart."""

    def __init__(self, root: Path, page_size: int = 64 << 10, memory: int = 64 << 20,
                 disk: int = 256 << 20) -> None:
        self.root, self.page_size, self.memory, self.disk = root, page_size, memory, disk
        self.kv: KV | None = None
        self.node: MeshNode | None = None

    def open(self) -> MeshNode:
        self.kv = RocksKV(os.path.join(self.root, "meta"))
        self.stats = Stats()
        self.cache = PageCache(os.path.join(self.root, "pages"), self.page_size, self.memory, self.disk)
        self.metrics = Metrics(self.stats, self.cache)
        mounts = MountTable(self.kv, wrap=lambda s, m: InstrumentedStore(s, self.metrics))
        self.node = MeshNode(mounts, MetadataCache(self.kv), self.cache, self.stats,
                             ReadAhead(self.page_size, max_pages=4))
        return self.node

    async def close(self) -> None:
        if self.node is not None:
            await self.node.close()
        if self.kv is not None:
            self.kv.close()
        self.node, self.kv = None, None

    async def reopen(self) -> MeshNode:
        await self.close()
        return self.open()

    def gets(self) -> int:
        return sum(n for (_, op), n in self.stats.understore_requests.items() if op == "get")
