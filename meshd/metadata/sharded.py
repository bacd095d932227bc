"""Metadata sharded over the region's nodes: each key at its owner's RocksDB.

The status of a path (``s:<path>``) and the listing of a directory
(``l:<dir>``) each live on one node: the owner the ring names for the key. A
node asked about a key it does not own forwards the call to the owner over
the metadata wire; if the owner does not answer, to the next node on the
ring; if none answers, it serves the call itself from the under-store (so a
dead node fails no request). A listing's owner that loads a directory from
the under-store sends the children's statuses to *their* owners, so a million
files end up spread over the shards, and ``ls`` then ``stat`` of each file
still costs the under-store one request.

In embedded mode (one member) every key is local and nothing is forwarded.
This class is what :class:`~meshd.core.node.MeshNode` and the S3 gateway talk to;
:class:`~meshd.metadata.shard.MetadataCache` is the local shard underneath.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from meshd import paths
from meshd.attrs import Attrs
from meshd.cluster.membership import Member
from meshd.cluster.peers import Cluster
from meshd.errors import NodeUnavailable
from meshd.metadata.mounts import Mount
from meshd.metadata.shard import FileStatus, MetadataCache
from meshd.understore import UnderStore

log = logging.getLogger(__name__)
T = TypeVar("T")
PUSH_BATCH = 5000  # statuses per message when a listing owner hands children to their owners
LIST_PAGE = 5000


def status_to_wire(s: FileStatus) -> list[Any]:
    if s.attrs is not None:
        return [s.path, s.size, s.mtime, s.version, s.is_dir, s.fetched_at, s.attrs.to_wire()]
    return [s.path, s.size, s.mtime, s.version, s.is_dir, s.fetched_at]


def status_from_wire(w: list[Any]) -> FileStatus:
    return FileStatus(str(w[0]), int(w[1]), float(w[2]), str(w[3]), bool(w[4]), float(w[5]),
                      Attrs.from_wire(w[6]) if len(w) > 6 else None)


class ShardedMetadata:
    def __init__(self, local: MetadataCache, cluster: Cluster | None = None) -> None:
        self.local = local
        self.cluster = cluster
        self.forwarded = 0  # calls this node sent to an owner
        self.fallbacks = 0  # calls served here because no owner answered
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def pending(self) -> int:
        """Status pushes to other shards still in flight."""
        return len(self._background)

    @property
    def write_errors(self) -> int:
        return self.local.write_errors

    def _chain(self, key: bytes) -> list[Member] | None:
        """The owners to ask, or None when this node owns the key (or is alone)."""
        return None if self.cluster is None else self.cluster.remote_chain(key)

    async def _route(self, key: bytes, op: str, args: dict[str, Any],
                     here: Callable[[], Awaitable[T]], parse: Callable[[Any], T]) -> T:
        chain = self._chain(key)
        if chain is None:
            return await here()
        assert self.cluster is not None
        cluster = self.cluster

        async def ask(m: Member) -> T:
            self.forwarded += 1
            return parse(await cluster.call(m, op, args))

        answered, result = await cluster.ask_chain(chain, ask)
        if answered:
            return cast(T, result)  # the answer may itself be None (no attributes)
        self.fallbacks += 1
        return await here()

    # ---- reads ---------------------------------------------------------------

    async def stat(self, mount: Mount, store: UnderStore, path: str, rel: str,
                   *, fresh: bool = False) -> tuple[FileStatus, FileStatus | None]:
        async def here() -> tuple[FileStatus, FileStatus | None]:
            return await self.local.stat(mount, store, path, rel, fresh=fresh)

        return await self._route(b"s:" + path.encode(), "shard.stat", {"p": path, "f": fresh}, here,
                                 lambda r: (status_from_wire(r), None))

    async def list_page(self, mount: Mount, store: UnderStore, path: str, rel: str, after: str = "",
                        limit: int = 0) -> tuple[list[FileStatus], bool]:
        async def here() -> tuple[list[FileStatus], bool]:
            return await self.local_list(mount, store, path, rel, after, limit)

        def parse(r: Any) -> tuple[list[FileStatus], bool]:
            t = float(r["t"])
            return [FileStatus(paths.join(path, e[0]), e[1], e[2], e[3], e[4], t,
                               Attrs.from_wire(e[5]) if len(e) > 5 else None) for e in r["e"]], bool(r["more"])

        return await self._route(b"l:" + path.encode(), "shard.list", {"p": path, "a": after, "n": limit}, here, parse)

    async def listdir(self, mount: Mount, store: UnderStore, path: str, rel: str) -> list[FileStatus]:
        if self._chain(b"l:" + path.encode()) is None:
            entries, _ = await self.local_list(mount, store, path, rel)
            return entries
        out: list[FileStatus] = []
        after, more = "", True
        while more:
            page, more = await self.list_page(mount, store, path, rel, after, LIST_PAGE)
            out.extend(page)
            if page:
                after = paths.basename(page[-1].path)
        return out

    async def local_list(self, mount: Mount, store: UnderStore, path: str, rel: str, after: str = "",
                         limit: int = 0) -> tuple[list[FileStatus], bool]:
        """This node's shard answers (it owns the listing, or no owner answered)."""
        alone = self.cluster is None or self.cluster.single
        return await self.local.listdir(mount, store, path, rel, after, limit, children_here=alone,
                                        on_load=None if alone else self._push_children)

    async def _push_children(self, statuses: list[FileStatus]) -> None:
        """Hand freshly listed children's statuses to their owners (best effort, background)."""
        assert self.cluster is not None
        ring, me = self.cluster.ring, self.cluster.me.node_id

        def group() -> tuple[list[FileStatus], dict[str, list[FileStatus]]]:
            by_owner: dict[str, list[FileStatus]] = defaultdict(list)
            mine: list[FileStatus] = []
            for s in statuses:
                owner = ring.owner(b"s:" + s.path.encode())
                (mine if owner is None or owner == me else by_owner[owner]).append(s)
            if mine:
                self.local.record_many(mine)
            return mine, by_owner

        _mine, by_owner = await asyncio.to_thread(group) if len(statuses) > 1000 else group()
        for owner, batch in by_owner.items():
            member = self.cluster.members.get(owner)
            if member is not None:
                self._spawn(self._push(member, batch))

    async def _push(self, m: Member, statuses: list[FileStatus]) -> None:
        assert self.cluster is not None
        for i in range(0, len(statuses), PUSH_BATCH):
            batch = [status_to_wire(s) for s in statuses[i:i + PUSH_BATCH]]
            try:
                await self.cluster.call(m, "shard.put", {"s": batch}, wait=60)
            except NodeUnavailable as e:
                self.cluster.suspect(m, e)
                return
            except Exception as e:  # a cache fill: losing it costs one more HEAD later
                log.warning("could not hand %d statuses to %s: %s", len(batch), m.node_id, e)
                return

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background pushes (tests and benchmarks want a settled state)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ---- writes and invalidations ---------------------------------------------

    async def _to_owner(self, key: bytes, op: str, args: dict[str, Any], here: Callable[[], None]) -> None:
        async def local() -> None:
            here()

        await self._route(key, op, args, local, lambda r: None)

    async def record(self, status: FileStatus) -> None:
        """A status learnt from a write; the parent's listing is now stale."""
        parent = paths.parent(status.path)
        await asyncio.gather(
            self._to_owner(b"s:" + status.path.encode(), "shard.put", {"s": [status_to_wire(status)]},
                           lambda: self.local.record_many([status])),
            self._to_owner(b"l:" + parent.encode(), "shard.drop", {"l": [parent]},
                           lambda: self.local.drop(listings=[parent])))

    async def invalidate(self, path: str) -> None:
        parent = paths.parent(path)
        await asyncio.gather(
            self._to_owner(b"s:" + path.encode(), "shard.drop", {"s": [path]}, lambda: self.local.drop(statuses=[path])),
            self._to_owner(b"l:" + path.encode(), "shard.drop", {"l": [path]}, lambda: self.local.drop(listings=[path])),
            self._to_owner(b"l:" + parent.encode(), "shard.drop", {"l": [parent]},
                           lambda: self.local.drop(listings=[parent])))

    async def forget_subtree(self, path: str) -> int:
        """Forget ``path`` and everything below it, on every shard."""
        n = self.local.forget_subtree(path)
        if self.cluster is not None and not self.cluster.single:
            for node_id, r in (await self.cluster.broadcast("shard.forget", {"p": path})).items():
                if isinstance(r, Exception):
                    log.warning("forget %s on %s failed: %s", path, node_id, r)
                else:
                    n += int(r)
        return n

    # ---- object attributes (S3 gateway) --------------------------------------

    async def attrs(self, path: str, version: str) -> dict[str, Any] | None:
        async def here() -> dict[str, Any] | None:
            return self.local.attrs(path, version)

        return await self._route(b"s:" + path.encode(), "shard.attrs", {"p": path, "v": version}, here,
                                 lambda r: r)

    async def set_attrs(self, path: str, version: str, attrs: dict[str, Any]) -> None:
        await self._to_owner(b"s:" + path.encode(), "shard.set_attrs", {"p": path, "v": version, "a": attrs},
                             lambda: self.local.set_attrs(path, version, attrs))

    async def drop_attrs(self, path: str) -> None:
        await self._to_owner(b"s:" + path.encode(), "shard.drop_attrs", {"p": path},
                             lambda: self.local.drop_attrs(path))

    def cached_paths(self, path: str) -> list[str]:
        return self.local.cached_paths(path)

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
