"""Build an in-process MeshNode for core tests (no servers), through the daemon's
composition root (:mod:`meshd.compose`, embedded mode): wired exactly like ``meshd``'s."""

from __future__ import annotations

from pathlib import Path

from meshd.cache.pages import PageCache
from meshd.compose import NodeParts, build, member
from meshd.config import CacheConfig, NodeConfig
from meshd.core.node import MeshNode
from meshd.metadata.kv import KV
from meshd.metrics import Metrics, Stats


class NodeBox:
    """A node plus the pieces tests poke at; ``reopen()`` simulates a restart."""

    def __init__(self, root: Path, page_size: int = 64 << 10, memory: int = 64 << 20,
                 disk: int = 256 << 20) -> None:
        self.root, self.page_size, self.memory, self.disk = root, page_size, memory, disk
        self.config = NodeConfig(data_dir=str(root), default_mount=False, cache=CacheConfig(
            page_size=page_size, memory_capacity=memory, disk_capacity=disk, readahead_pages=4))
        self.parts: NodeParts | None = None
        self.kv: KV | None = None
        self.node: MeshNode | None = None

    def open(self) -> MeshNode:
        self.parts = parts = build(self.config, member(self.config, "test-node"))
        self.kv, self.node = parts.kv, parts.node
        self.stats: Stats = parts.stats
        self.cache: PageCache = parts.cache
        self.metrics: Metrics = parts.metrics
        return parts.node

    async def close(self) -> None:
        if self.parts is not None:
            await self.parts.close()
        self.parts, self.node, self.kv = None, None, None

    async def reopen(self) -> MeshNode:
        await self.close()
        return self.open()

    def gets(self) -> int:
        return sum(n for (_, op), n in self.stats.understore_requests.items() if op == "get")
