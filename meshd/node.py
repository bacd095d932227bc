"""The filesystem core of a node: one namespace over the mounts, cached.

Every front end (gRPC service, HTTP data API, and later S3, WebHDFS and FUSE)
is a thin adapter over :class:`MeshNode`. Paths are mesh paths; errors are
:mod:`meshd.errors`.

Read path (``open_read``)::

    resolve mount -> stat (metadata cache, sync interval) -> pages covering
    [offset, end) -> for each page: memory tier | disk tier | single-flight
    fetch of exactly that page from the under-store (put in both tiers)

The first page is fetched before ``open_read`` returns, so "not found",
"under-store down" and "object changed" are reported before a front end
commits to a response. Later pages are fetched ``window`` ahead of the page
being sent (pipelining inside one read); read-ahead beyond the read's end only
happens for readers proven sequential (:mod:`meshd.readahead`). A NoCache read
streams the requested range from the under-store and touches no tier.

Write path (simple, for now): writes go through to the under-store, then
the file's status is recorded and its old cached pages dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from . import paths
from .cluster import Cluster
from .errors import (
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    MeshError,
    NodeUnavailable,
    NotFound,
    NotSupported,
    PermissionDenied,
    UnderStoreError,
    VersionChanged,
)
from .federation import Federation
from .membership import Member
from .metadata import FileStatus, MetadataCache, page_of
from .metrics import Stats
from .mounts import Mount, MountTable
from .pages import DiskPage, MemPage, Page, PageCache, PageKey, SingleFlight, file_id, version_id
from .readahead import ReadAhead
from .shards import ShardedMetadata
from .understore import UnderStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A mesh path resolved to its mount."""

    path: str
    mount: Mount
    store: UnderStore
    rel: str


@dataclass
class Segment:
    """``length`` bytes at ``offset`` of a page: bytes, or an open page file."""

    page: Page
    offset: int
    length: int
    key: PageKey | None = None

    def bytes(self) -> bytes:
        if isinstance(self.page, MemPage):
            return self.page.data[self.offset:self.offset + self.length]
        return os.pread(self.page.file.fileno(), self.length, self.offset)

    def close(self) -> None:
        if isinstance(self.page, DiskPage):
            self.page.close()


@dataclass
class ReadStream:
    status: FileStatus
    offset: int
    length: int
    segments: AsyncIterator[Segment]

    async def aclose(self) -> None:
        await self.segments.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LoadProgress:
    path: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    bytes_fetched: int  # of bytes_done, how many came from the under-store


class MeshNode:
    def __init__(self, mounts: MountTable, metadata: MetadataCache, cache: PageCache,
                 stats: Stats, readahead: ReadAhead | None = None, load_parallelism: int = 8,
                 cluster: Cluster | None = None, federation: Federation | None = None) -> None:
        self.mounts = mounts
        self.federation = federation
        self.shard = metadata  # this node's own RocksDB shard
        self.cluster = cluster
        self.metadata = ShardedMetadata(metadata, cluster)  # every key at its owner
        self.cache = cache
        self.stats = stats
        self.readahead = readahead or ReadAhead(cache.page_size)
        self.flight = SingleFlight()
        self.load_parallelism = load_parallelism
        self._background: set[asyncio.Task[Any]] = set()
        self._warming: set[PageKey] = set()  # read-ahead pages being warmed at their owners

    # ---- namespace -------------------------------------------------------

    def resolve(self, path: str) -> Target | None:
        """The mount of ``path``; None for a virtual directory above mounts."""
        path = paths.normalize(path)
        found = self.mounts.resolve(path)
        if found is None:
            if self.mounts.children_of_virtual(path) is None:
                raise NotFound(f"no mount covers {path}")
            return None
        mount, rel = found
        return Target(path, mount, self.mounts.store(mount), rel)

    def _target(self, path: str) -> Target:
        """Resolve a path that is to be changed: it must lie inside a mount."""
        try:
            t = self.resolve(path)
        except NotFound:
            t = None
        if t is None:
            raise PermissionDenied(f"{paths.normalize(path)} is not inside a mount")
        return t

    async def _stat(self, t: Target, fresh: bool = False) -> FileStatus:
        status, before = await self.metadata.stat(t.mount, t.store, t.path, t.rel, fresh=fresh)
        return self._drop_if_changed(t, status, before)

    def _drop_if_changed(self, t: Target, status: FileStatus, before: FileStatus | None) -> FileStatus:
        """A stat revealed a new version: drop the old version's pages held here."""
        if before is not None and before.version and before.version != status.version:
            self.cache.drop_file(file_id(t.mount.identity, t.rel), keep_version=version_id(status.version))
        return status

    async def stat(self, path: str) -> FileStatus:
        t = self.resolve(path)
        if t is None:
            return FileStatus(paths.normalize(path), 0, 0.0, "", True)
        return await self._stat(t)

    async def listdir(self, path: str) -> list[FileStatus]:
        t = self.resolve(path)
        if t is None:
            norm = paths.normalize(path)
            names = self.mounts.children_of_virtual(norm) or []
            return [FileStatus(paths.join(norm, n), 0, 0.0, "", True) for n in names]
        return await self.metadata.listdir(t.mount, t.store, t.path, t.rel)

    async def list_page(self, path: str, after: str = "", limit: int = 1000) -> tuple[list[FileStatus], bool]:
        """Entries of a directory in name order after the name ``after``: (page, more)."""
        if limit < 0:
            raise InvalidArgument(f"bad listing limit {limit}")
        t = self.resolve(path)
        if t is None:
            return page_of(await self.listdir(path), after, limit)
        return await self.metadata.list_page(t.mount, t.store, t.path, t.rel, after, limit)

    def status_hint(self, path: str, version: Any, size: Any) -> FileStatus | None:
        """A status a client just got from the status's owner (it reads page by page
        from each page's owner): trusted for this read, checked by every fetch."""
        if version is None or size is None:
            return None
        if not isinstance(version, str) or not version or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"bad status hint: version={version!r} size={size!r}")
        return FileStatus(paths.normalize(path), size, 0.0, version, False)

    async def open_info(self, path: str, *, local: bool = False) -> tuple[FileStatus, str]:
        """A file's status and its file id (the key of its pages on the ring), so a
        client can send each page range to the page's owner."""
        status = await (self.local_stat(path) if local else self.stat(path))
        t = self.resolve(path)
        fid = file_id(t.mount.identity, t.rel) if t is not None and not status.is_dir else ""
        return status, fid

    # ---- this node's shard (calls forwarded by peers that do not own the key) ----

    async def local_stat(self, path: str, fresh: bool = False) -> FileStatus:
        t = self.resolve(path)
        if t is None:
            return FileStatus(paths.normalize(path), 0, 0.0, "", True)
        status, before = await self.shard.stat(t.mount, t.store, t.path, t.rel, fresh=fresh)
        return self._drop_if_changed(t, status, before)

    async def local_list(self, path: str, after: str = "", limit: int = 0) -> tuple[list[FileStatus], bool]:
        t = self.resolve(path)
        if t is None:
            return await self.list_page(path, after, limit)
        return await self.metadata.local_list(t.mount, t.store, t.path, t.rel, after, limit)

    # ---- read path -------------------------------------------------------

    async def open_read(self, path: str, offset: int = 0, length: int = -1, *,
                        nocache: bool = False, stream_key: str | None = None,
                        status: FileStatus | None = None, strict: bool = False) -> ReadStream:
        """Open a range for reading. ``status``: a status the caller has just
        obtained for this path (saves a second under-store check); if the object
        has changed since, the fetch notices (version-checked) and stats again,
        unless ``strict``: then the read fails with VersionChanged (a client
        reading one file from several nodes pins the version)."""
        if offset < 0 or length < -1:
            raise InvalidArgument(f"bad range: offset={offset} length={length}")
        t = self.resolve(path)
        if t is None:
            raise IsADirectory(f"is a directory: {paths.normalize(path)}")
        known = status
        for attempt in (0, 1):
            status = known if attempt == 0 and known is not None else await self._stat(t, fresh=attempt > 0)
            if status.is_dir:
                raise IsADirectory(f"is a directory: {t.path}")
            end = status.size if length < 0 else min(status.size, offset + length)
            start = min(offset, status.size)
            if nocache or t.mount.nocache:
                return ReadStream(status, start, end - start, self._nocache_segments(t, status, start, end))
            fid, vid = file_id(t.mount.identity, t.rel), version_id(status.version)
            extra = self.readahead.on_read(stream_key or fid, start, end)
            pages = self.cache.page_range(start, end)
            first: Page | None = None
            if pages:
                try:
                    first = await self._get_page(t, status, PageKey(fid, vid, pages[0]))
                except VersionChanged:
                    if attempt == 0 and not (strict and known is not None):
                        continue  # the object changed since it was stat'ed: stat again
                    raise
            segments = self._page_segments(t, status, fid, vid, start, end, extra, first)
            return ReadStream(status, start, end - start, segments)
        raise AssertionError("unreachable")

    async def _page_segments(self, t: Target, status: FileStatus, fid: str, vid: str,
                             start: int, end: int, extra: int, first: Page | None) -> AsyncIterator[Segment]:
        ps = self.cache.page_size
        pages = self.cache.page_range(start, end)
        last_page = (status.size - 1) // ps if status.size else -1
        ahead_stop = min(pages.stop + extra, last_page + 1)
        window = self.readahead.in_read_window()
        batch = max(1, window // 2)
        pending: dict[int, asyncio.Future[Any]] = {}
        next_launch = pages.start + 1
        try:
            for i in pages:
                if i == pages.start and first is not None:
                    page, first = first, None
                else:
                    result = await pending.pop(i)
                    page = result if isinstance(result, MemPage | DiskPage) else self._fetched(result)
                # Keep up to `window` pages in flight ahead of the one being sent,
                # launched `batch` at a time so that missing pages coalesce into
                # extents (one under-store request each).
                if next_launch < ahead_stop and next_launch - i <= window - batch:
                    stop = min(next_launch + batch, ahead_stop)
                    inside = range(next_launch, min(stop, pages.stop))
                    pending.update(self._launch(t, status, fid, vid, inside))
                    if stop > pages.stop:  # read-ahead for a proven-sequential reader
                        self._launch(t, status, fid, vid, range(max(next_launch, pages.stop), stop), prefetch=True)
                    next_launch = stop
                lo = max(start, i * ps) - i * ps
                hi = min(end, (i + 1) * ps) - i * ps
                yield Segment(page, lo, hi - lo, PageKey(fid, vid, i))
        finally:
            if first is not None and isinstance(first, DiskPage):
                first.close()
            for fut in pending.values():
                fut.add_done_callback(_close_page_result)

    def _fetched(self, data: bytes) -> MemPage:
        self.stats.misses += 1
        self.stats.bytes_by_source["understore"] += len(data)
        return MemPage(data)

    def _launch(self, t: Target, status: FileStatus, fid: str, vid: str,
                indices: range, *, prefetch: bool = False) -> dict[int, asyncio.Future[Any]]:
        """Start getting pages: cached ones from the cache, a peer's from the peer,
        missing runs of this node's own as extents.

        Returns, per page, a future of a Page (cache hit, peer) or of the page's
        bytes (fetched). A page another reader is already fetching is waited for,
        never fetched again (single-flight across extents).

        ``prefetch`` (read-ahead past a sequential reader's end): nothing is
        returned; held and in-flight pages are left alone, and a peer's pages
        are *warmed at the peer* (no bytes come back: this node would not keep
        them, and the reader may never ask).
        """
        out: dict[int, asyncio.Future[Any]] = {}
        run: list[tuple[int, asyncio.Future[Any]]] = []
        for i in indices:
            key = PageKey(fid, vid, i)
            inflight = self.flight.get(key)
            if inflight is not None:
                if not prefetch:
                    out[i] = inflight
            elif self.cache.contains(key):
                if not prefetch:
                    out[i] = asyncio.ensure_future(self._get_page(t, status, key))
            elif (chain := self._page_chain(key)) is not None:
                if prefetch:
                    if key not in self._warming:
                        self._warming.add(key)
                        self._spawn(self._warm_quietly(t, status, key, chain))
                    continue
                fut = self.flight.claim(key)
                assert fut is not None
                out[i] = fut
                self._spawn(self._resolve_into(fut, self._remote_page(t, status, key, chain)))
            else:
                fut = self.flight.claim(key)
                assert fut is not None
                out[i] = fut
                if run and run[-1][0] != i - 1:
                    self._spawn(self._fetch_extent(t, status, fid, vid, run))
                    run = []
                run.append((i, fut))
        if run:
            self._spawn(self._fetch_extent(t, status, fid, vid, run))
        return out

    async def _warm_quietly(self, t: Target, status: FileStatus, key: PageKey, chain: list[Member]) -> None:
        try:
            await self._warm_remote(t, status, key, chain)
        except MeshError as e:  # a prefetch: the read itself will report real trouble
            log.debug("read-ahead of page %d of %s failed: %s", key.index, t.path, e)
        finally:
            self._warming.discard(key)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch_extent(self, t: Target, status: FileStatus, fid: str, vid: str,
                            run: list[tuple[int, asyncio.Future[Any]]]) -> None:
        """Consecutive missing pages this node owns. Home here: one ranged read. Homed in
        another region: the router picks each page's source; pages from a peer region's
        cache come one by one, the rest as ranged reads of the under-store."""
        try:
            plan = await self._plan(t, status, fid, vid, [i for i, _ in run])
        except BaseException as e:
            _fail([fut for _, fut in run], e)
            return
        if plan is None:
            await self._extent_from_store(t, status, fid, vid, run)
            return
        store_run: list[tuple[int, asyncio.Future[Any]]] = []
        for i, fut in run:
            sources = plan[i]
            if sources and sources[0].kind == "store":
                if store_run and store_run[-1][0] != i - 1:
                    self._spawn(self._extent_from_store(t, status, fid, vid, store_run, sources[0].name))
                    store_run = []
                store_run.append((i, fut))
            else:
                self._spawn(self._resolve_into(fut, self._fetch_routed(t, status, PageKey(fid, vid, i), sources)))
        if store_run:
            await self._extent_from_store(t, status, fid, vid, store_run, plan[store_run[0][0]][0].name)

    async def _extent_from_store(self, t: Target, status: FileStatus, fid: str, vid: str,
                                 run: list[tuple[int, asyncio.Future[Any]]], route: str = "") -> None:
        """One ranged read for consecutive pages; each page resolves as its bytes arrive."""
        ps = self.cache.page_size
        first, last = run[0][0], run[-1][0]
        start, end = first * ps, min(status.size, (last + 1) * ps)
        futs = dict(run)
        idx, parts, have = first, [], 0
        try:
            async for chunk in t.store.get_range(t.rel, start, end, status.version):
                while chunk:
                    size = min(ps, status.size - idx * ps)
                    if len(chunk) <= size - have:  # the usual, aligned case: no copy
                        take, chunk = chunk, b""
                    else:
                        take, chunk = chunk[:size - have], chunk[size - have:]
                    parts.append(take)
                    have += len(take)
                    if have == size:
                        data = parts[0] if len(parts) == 1 else b"".join(parts)
                        await self.cache.put(PageKey(fid, vid, idx), data)
                        self.stats.page_fetches += 1
                        if route and self.federation is not None:
                            self.federation.routed[route] += 1
                        futs.pop(idx).set_result(data)
                        idx, parts, have = idx + 1, [], 0
            if futs:
                raise UnderStoreError(f"short read from {t.mount.uri}/{t.rel}: pages "
                                      f"{sorted(futs)} missing")
        except BaseException as e:
            _fail(futs.values(), e)

    async def _get_page(self, t: Target, status: FileStatus, key: PageKey, *, owned: bool = False) -> Page:
        """A page from this node's tiers, its owner in the cluster, or the under-store.
        ``owned``: serve it here whatever the ring says (a peer asked us as its owner)."""
        page = await self.cache.get(key)
        size = min(self.cache.page_size, status.size - key.index * self.cache.page_size)
        if page is not None:
            self.stats.hits += 1
            self.stats.bytes_by_source["memory" if isinstance(page, MemPage) else "disk"] += size
            return page
        chain = None if owned else self._page_chain(key)
        if chain is not None:
            result = await self.flight.do(key, lambda: self._remote_page(t, status, key, chain))
            return result if isinstance(result, MemPage) else MemPage(result)  # another reader's fetch: bytes
        self.stats.misses += 1
        data: bytes | MemPage = await self.flight.do(key, lambda: self._fetch_page(t, status, key))
        if isinstance(data, MemPage):
            return data  # from a peer region's cache (counted there)
        self.stats.bytes_by_source["understore"] += size
        return MemPage(data)

    # ---- pages owned by other nodes of the cluster ---------------------------

    def _page_chain(self, key: PageKey) -> list[Member] | None:
        """The page's owner and fallbacks, or None when this node owns it (or is alone)."""
        return None if self.cluster is None else self.cluster.remote_chain(f"p:{key.file_id}:{key.index}".encode())

    async def _remote_page(self, t: Target, status: FileStatus, key: PageKey, chain: list[Member]) -> MemPage:
        """Get a page from its owner; on a dead owner, the next one; then the under-store.

        Every node walks the same chain, so a fallback owner still sees every
        request for the page and single-flight holds cluster-wide. Counted here,
        whichever source served it.
        """
        assert self.cluster is not None
        cluster = self.cluster
        expected = min(self.cache.page_size, status.size - key.index * self.cache.page_size)

        async def ask(m: Member) -> bytes:
            data = await cluster.fetch_page(m, t.path, status.version, status.size, key.index)
            if len(data) != expected:
                raise UnderStoreError(f"peer {m.node_id} sent {len(data)} of {expected} bytes of page "
                                      f"{key.index} of {t.path}")
            return data

        answered, data = await cluster.ask_chain(chain, ask)
        if answered and data is not None:
            self.stats.bytes_by_source["peer"] += len(data)
            return MemPage(data)
        self.stats.misses += 1
        got = await self._fetch_page(t, status, key)
        if isinstance(got, MemPage):
            return got
        self.stats.bytes_by_source["understore"] += len(got)
        return MemPage(got)

    @staticmethod
    async def _resolve_into(fut: asyncio.Future[Any], coro: Any) -> None:
        try:
            result = await coro
        except BaseException as e:
            _fail([fut], e)
        else:
            if not fut.done():
                fut.set_result(result)

    async def serve_page(self, path: str, version: str, size: int, index: int,
                         cached_only: bool = False) -> tuple[Page, int, bool]:
        """A peer asks this node, as the page's owner, for page ``index`` of ``path`` at
        ``version`` (``size`` bytes long). Served from the tiers or fetched once (version-checked).
        Returns the page, its length, and whether it had to be fetched. ``cached_only`` (a
        peer *region* asking): NotFound unless the page is held here; nothing is fetched."""
        t = self._target(path)
        ps = self.cache.page_size
        if size < 0 or index < 0 or index * ps >= max(size, 1) or not version:
            raise InvalidArgument(f"bad page request: index={index} size={size} version={version!r}")
        status = FileStatus(t.path, size, 0.0, version, False)
        key = PageKey(file_id(t.mount.identity, t.rel), version_id(version), index)
        cached = self.cache.contains(key)
        if cached_only:
            page = await self.cache.get(key) if cached else None
            if page is None:
                raise NotFound(f"page {index} of {t.path} is not cached in region "
                               f"{self.federation.region if self.federation else '?'}")
            return page, min(ps, size - index * ps), False
        page = await self._get_page(t, status, key, owned=True)
        return page, min(ps, size - index * ps), not cached

    async def _plan(self, t: Target, status: FileStatus, fid: str, vid: str,
                    indices: list[int]) -> dict[int, list[Any]] | None:
        """Each page's sources, cheapest first, when the mount's home is another region."""
        fed = self.federation
        if fed is None or self.cluster is None:
            return None
        cluster = self.cluster

        async def ask(m: Member, op: str, args: dict[str, Any]) -> Any:
            return await cluster.call(m, op, args, wait=5.0)

        return await fed.plan(t.mount, t.path, status.version, status.size, fid, vid, indices,
                              self.cache.page_size, ask)

    async def _fetch_routed(self, t: Target, status: FileStatus, key: PageKey,
                            sources: list[Any]) -> bytes | MemPage:
        """A page from the first source of ``sources`` that delivers it: a peer region's
        cache or the home under-store. A failing source is logged and the next one tried."""
        fed = self.federation
        assert fed is not None
        last: Exception | None = None
        for src in sources:
            try:
                result: bytes | MemPage
                if src.kind == "store":
                    result = await self._read_store_page(t, status, key)
                else:
                    data = await fed.fetch_from_region(src.region, t.path, status.version, status.size,
                                                       key.file_id, key.index, self.cache.page_size)
                    await self.cache.put(key, data)
                    self.stats.bytes_by_source["region"] += len(data)
                    result = MemPage(data)  # a Page: not counted again as an under-store fetch
                fed.routed[src.name] += 1
                return result
            except VersionChanged:
                raise
            except MeshError as e:
                last = e
                fed.fallbacks += 1
                if src.kind == "cache":
                    fed.forget_held(src.region, key.file_id, key.version_id)
                log.warning("page %d of %s: source %s failed (%s); trying the next", key.index, t.path,
                            src.name, e)
        raise last if last is not None else UnderStoreError(
            f"no source can reach page {key.index} of {t.path} from region {fed.region}")

    def held_here(self, path: str, version: str, indices: list[int]) -> list[int]:
        """Which of the pages ``indices`` of ``path`` at ``version`` this node holds."""
        t = self._target(path)
        fid, vid = file_id(t.mount.identity, t.rel), version_id(version)
        return [i for i in indices if self.cache.contains(PageKey(fid, vid, i))]

    async def held_in_region(self, path: str, version: str, size: int) -> list[int]:
        """Which pages of ``path`` at ``version`` this region holds: each page's owner
        answers for it (a peer region asks before choosing where to fetch from)."""
        by_owner = await self.held_by_owner(path, version, size)
        return sorted(i for pages in by_owner.values() for i in pages)

    async def held_by_owner(self, path: str, version: str, size: int) -> dict[str, list[int]]:
        """The pages of ``path`` at ``version`` this region holds, by the node holding them
        (its node id): each page's owner answers for its pages."""
        if size < 0 or not version:
            raise InvalidArgument(f"bad held request: size={size} version={version!r}")
        t = self._target(path)
        fid = file_id(t.mount.identity, t.rel)
        indices = list(self.cache.page_range(0, size))
        cluster = self.cluster
        if cluster is None or cluster.single:
            held = self.held_here(path, version, indices)
            return {cluster.me.node_id if cluster is not None else "": held} if held else {}
        by_owner: dict[str, list[int]] = {}
        owners: dict[str, Member] = {}
        for i in indices:
            chain = cluster.chain(f"p:{fid}:{i}".encode(), 1)
            if chain:
                by_owner.setdefault(chain[0].node_id, []).append(i)
                owners[chain[0].node_id] = chain[0]

        async def one(node_id: str, pages: list[int]) -> list[int]:
            m = owners[node_id]
            if cluster.is_me(m):
                return self.held_here(path, version, pages)
            try:
                got = await cluster.call(m, "shard.held", {"p": path, "v": version, "i": pages}, wait=5.0)
                return [int(i) for i in got]
            except MeshError:
                return []  # an owner that cannot answer holds nothing we can count on

        results = await asyncio.gather(*(one(n, ps) for n, ps in by_owner.items()))
        return {n: r for n, r in zip(by_owner, results, strict=True) if r}

    async def _fetch_page(self, t: Target, status: FileStatus, key: PageKey) -> bytes | MemPage:
        plan = await self._plan(t, status, key.file_id, key.version_id, [key.index])
        if plan is not None and plan[key.index]:
            return await self._fetch_routed(t, status, key, plan[key.index])
        return await self._read_store_page(t, status, key)

    async def _read_store_page(self, t: Target, status: FileStatus, key: PageKey) -> bytes:
        ps = self.cache.page_size
        start = key.index * ps
        end = min(status.size, start + ps)
        data = await t.store.read_all(t.rel, start, end, status.version)
        if len(data) != end - start:
            raise UnderStoreError(f"short read from {t.mount.uri}/{t.rel}: page {key.index} "
                                  f"has {len(data)} of {end - start} bytes")
        await self.cache.put(key, data)
        self.stats.page_fetches += 1
        return data

    async def _nocache_segments(self, t: Target, status: FileStatus, start: int,
                                end: int) -> AsyncIterator[Segment]:
        if end <= start:
            return
        async for chunk in t.store.get_range(t.rel, start, end, status.version):
            self.stats.bytes_by_source["nocache"] += len(chunk)
            yield Segment(MemPage(chunk), 0, len(chunk))

    async def prefer_file(self, seg: Segment, min_length: int = 256 << 10) -> None:
        """Swap a large in-memory segment for its page file, for zero-copy senders."""
        if isinstance(seg.page, MemPage) and seg.key is not None and seg.length >= min_length:
            disk = await self.cache.open_disk(seg.key)
            if disk is not None:
                seg.page = disk

    async def read_bytes(self, path: str, offset: int = 0, length: int = -1, *,
                         nocache: bool = False) -> bytes:
        """Convenience for small reads (tests, RPC): the whole range as bytes."""
        stream = await self.open_read(path, offset, length, nocache=nocache)
        out = []
        async for seg in stream.segments:
            out.append(seg.bytes())
            seg.close()
        return b"".join(out)

    # ---- write path ------------------------------------------------------

    async def write(self, path: str, chunks: AsyncIterator[bytes]) -> FileStatus:
        t = self._target(path)
        t.mount.check_writable()
        if not t.rel:
            raise IsADirectory(f"{t.path} is a mount point")
        info = await t.store.put(t.rel, chunks)
        status = FileStatus.of(t.path, info, time.time())
        await self.metadata.record(status)
        self.cache.drop_file(file_id(t.mount.identity, t.rel), keep_version=version_id(status.version))
        return status

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> FileStatus:
        """Add bytes at the end of an existing file. A store that appends in place does
        (``capabilities.append``: POSIX, HDFS); any other (S3) gets the whole file again:
        its old bytes streamed back from the under-store, then the new ones (a full
        rewrite per call, documented in docs/WEBHDFS_COMPAT.md)."""
        t = self._target(path)
        t.mount.check_writable()
        old = await self._stat(t, fresh=True)
        if old.is_dir:
            raise IsADirectory(f"is a directory: {t.path}")
        if t.store.capabilities.append:
            info = await t.store.append(t.rel, chunks)
        else:
            async def joined() -> AsyncIterator[bytes]:
                async for c in t.store.get_range(t.rel, 0, old.size, old.version):
                    yield c
                async for c in chunks:
                    yield c

            info = await t.store.put(t.rel, joined())
        status = FileStatus.of(t.path, info, time.time())
        await self.metadata.record(status)
        self.cache.drop_file(file_id(t.mount.identity, t.rel), keep_version=version_id(status.version))
        return status

    async def mkdir(self, path: str) -> None:
        t = self._target(path)
        t.mount.check_writable()
        if t.rel:
            await t.store.mkdir(t.rel)
        await self.metadata.invalidate(t.path)

    async def delete(self, path: str, recursive: bool = False) -> int:
        """Delete a file or directory; returns the number of entries removed."""
        t = self._target(path)
        t.mount.check_writable()
        if not t.rel:
            raise PermissionDenied(f"{t.path} is a mount point: unmount it instead")
        status = await self._stat(t, fresh=True)
        removed = 0
        if status.is_dir:
            children = await t.store.list(t.rel)
            if children and not recursive:
                raise DirectoryNotEmpty(f"directory not empty: {t.path}")
            for child in children:
                removed += await self.delete(paths.join(t.path, paths.basename(child.path)), True)
        else:
            self.cache.drop_file(file_id(t.mount.identity, t.rel))
        await t.store.delete(t.rel)
        await self.metadata.forget_subtree(t.path)
        return removed + 1

    async def remove_empty_dirs(self, path: str) -> None:
        """Remove a directory tree that holds no file (asking the under-store, not the
        cache); DirectoryNotEmpty as soon as a file is found, and nothing is unlinked."""
        t = self._target(path)
        t.mount.check_writable()

        async def rm(rel: str) -> None:
            for child in await t.store.list(rel):
                if not child.is_dir:
                    raise DirectoryNotEmpty(f"directory not empty: {paths.join(t.path, child.path)}")
                await rm(child.path)
            await t.store.delete(rel)  # a directory: rmdir, which refuses if a file appeared

        await rm(t.rel)
        await self.metadata.forget_subtree(t.path)

    async def rename(self, src: str, dst: str) -> None:
        s, d = self._target(src), self._target(dst)
        if s.mount.path != d.mount.path:
            raise NotSupported(f"rename across mounts ({s.mount.path} -> {d.mount.path}) is not supported")
        s.mount.check_writable()
        if not s.rel or not d.rel:
            raise PermissionDenied("a mount point cannot be renamed")
        if not s.store.capabilities.rename:
            raise NotSupported(f"rename is not supported by {s.store.scheme}:// under-stores "
                               f"(mount {s.mount.path}); copy and delete instead")
        await s.store.rename(s.rel, d.rel)
        self.cache.drop_file(file_id(s.mount.identity, s.rel))
        await self.metadata.forget_subtree(s.path)
        await self.metadata.forget_subtree(d.path)

    # ---- cache management ------------------------------------------------

    async def walk_files(self, path: str) -> AsyncIterator[FileStatus]:
        status = await self.stat(path)
        if not status.is_dir:
            yield status
            return
        for child in await self.listdir(path):
            if child.is_dir:
                async for f in self.walk_files(child.path):
                    yield f
            else:
                yield child

    async def load(self, path: str, progress_interval: float = 0.2) -> AsyncIterator[LoadProgress]:
        """Warm the cache with every page under ``path``; yields progress.

        Pages are fetched ``load_parallelism`` at a time through the same
        single-flight as reads, so a load racing readers fetches nothing twice.
        Progress is yielded at most every ``progress_interval`` seconds, after
        each file, and once at the end.
        """
        files = [f async for f in self.walk_files(path)]
        total = sum(f.size for f in files)
        done = fetched = 0
        ps = self.cache.page_size
        sem = asyncio.Semaphore(self.load_parallelism)
        last = time.monotonic()

        async def one(t: Target, status: FileStatus, key: PageKey) -> tuple[int, bool]:
            size = min(ps, status.size - key.index * ps)
            async with sem:
                if self.cache.contains(key):
                    return size, False
                chain = self._page_chain(key)
                if chain is not None:
                    return size, await self._warm_remote(t, status, key, chain)
                await self.flight.do(key, lambda: self._fetch_page(t, status, key))
                return size, True

        for n, f in enumerate(files):
            t = self._target(f.path)
            fid, vid = file_id(t.mount.identity, t.rel), version_id(f.version)
            jobs = [one(t, f, PageKey(fid, vid, i)) for i in self.cache.page_range(0, f.size)]
            for coro in asyncio.as_completed(jobs):
                size, was_fetched = await coro
                done += size
                fetched += size if was_fetched else 0
                if time.monotonic() - last >= progress_interval:
                    last = time.monotonic()
                    yield LoadProgress(f.path, n, len(files), done, total, fetched)
            yield LoadProgress(f.path, n + 1, len(files), done, total, fetched)
        if not files:
            yield LoadProgress(paths.normalize(path), 0, 0, 0, 0, 0)

    async def _warm_remote(self, t: Target, status: FileStatus, key: PageKey, chain: list[Member]) -> bool:
        """Have the page's owner cache it (no bytes travel back); True if it was fetched."""
        assert self.cluster is not None
        cluster = self.cluster

        async def ask(m: Member) -> bool:
            body = await cluster.fetch_page(m, t.path, status.version, status.size, key.index, warm=True)
            return bool(json.loads(body).get("fetched"))

        answered, fetched = await cluster.ask_chain(chain, ask)
        if answered:
            return bool(fetched)
        if self.cache.contains(key):
            return False
        await self.flight.do(key, lambda: self._fetch_page(t, status, key))
        return True

    async def free(self, path: str) -> int:
        """Drop the cached pages of every known file at or below ``path``; returns bytes.

        In a cluster a file's pages are on every node: the files are found by
        walking the (cached) listings, and every member drops their pages."""
        norm = paths.normalize(path)
        if self.cluster is None or self.cluster.single:
            return self.free_ids(self._file_ids(self.metadata.cached_paths(norm)))
        ids = self._file_ids([f.path async for f in self.walk_files(norm)])
        freed = self.free_ids(ids)
        for node_id, r in (await self.cluster.broadcast("free", {"ids": ids}, wait=120)).items():
            if isinstance(r, Exception):
                log.warning("free %s on %s failed: %s", norm, node_id, r)
            else:
                freed += int(r)
        return freed

    def _file_ids(self, fpaths: list[str]) -> list[str]:
        ids = []
        for fpath in fpaths:
            found = self.mounts.resolve(fpath)
            if found is not None:
                mount, rel = found
                ids.append(file_id(mount.identity, rel))
        return ids

    def free_ids(self, ids: list[str]) -> int:
        return sum(self.cache.drop_file(i) for i in ids)

    async def sync(self, path: str) -> int:
        """Forget cached metadata under ``path`` and reload it from the under-store."""
        norm = paths.normalize(path)
        await self.metadata.forget_subtree(norm)
        count = 0
        async for _f in self.walk_files(norm):
            count += 1
        return count

    def report(self) -> dict[str, Any]:
        s, c = self.stats, self.cache
        by_source = dict(s.bytes_by_source)
        return {
            "page_size": c.page_size,
            "tiers": {
                name: {"capacity": st.capacity, "used": st.used, "pages": st.pages, "hits": st.hits,
                       "evicted_pages": st.evicted_pages}
                for name, st in (("memory", c.memory.stats), ("disk", c.disk.stats))
            },
            "hits": s.hits,
            "misses": s.misses,
            "page_fetches": s.page_fetches,
            "hit_ratio": s.hit_ratio(),
            "bytes_by_source": by_source,
            "bytes_from_cache": by_source["memory"] + by_source["disk"],
            "bytes_from_understore": by_source["understore"] + by_source["nocache"],
            "understore_requests": {f"{k[0]}:{k[1]}": v for k, v in sorted(s.understore_requests.items())},
            "cache_write_errors": c.disk.write_errors,
            "metadata_write_errors": self.metadata.write_errors,
            "corrupt_pages": c.disk.corrupt_pages,
            "mounts": len(self.mounts.entries()),
            "metadata_forwarded": self.metadata.forwarded,
            "metadata_fallbacks": self.metadata.fallbacks,
            "region_served": s.region_served,
            "federation": self.federation.report() if self.federation is not None else None,
        }

    async def cluster_report(self, wait: float = 2.0) -> list[dict[str, Any]]:
        """Every member of the region: state, capacity and use (asked of each, in parallel)."""
        c = self.cluster
        if c is None:
            return []

        async def one(m: Member) -> dict[str, Any]:
            row: dict[str, Any] = {"node_id": m.node_id, "region": m.region, "zone": m.zone,
                                   "grpc": m.grpc, "capacity": m.capacity, "labels": m.labels,
                                   "state": c.state(m)}
            try:
                r = self.report() if c.is_me(m) else await c.call(m, "report", {}, wait)
                tiers = r["tiers"]
                row["used"] = tiers["memory"]["used"] + tiers["disk"]["used"]
                row["pages"] = tiers["memory"]["pages"] + tiers["disk"]["pages"]
                row["hit_ratio"] = r["hit_ratio"]
                if r.get("federation"):
                    row["links"] = r["federation"]["links"]
            except NodeUnavailable:
                row["state"] = "unreachable"
            except Exception as e:
                row["state"] = f"error: {e}"
            return row

        rows = await asyncio.gather(*(one(m) for m in c.members.values()))
        return sorted(rows, key=lambda r: r["node_id"])

    async def close(self) -> None:
        await self.metadata.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.cache.drain()
        await self.mounts.close()


def _fail(futs: Iterable[asyncio.Future[Any]], e: BaseException) -> None:
    """Fail the page futures a fetch was to resolve; a cancellation (not an Exception) is
    reported to them as an UnderStoreError and then re-raised."""
    err = e if isinstance(e, Exception) else UnderStoreError("page fetch cancelled")
    for fut in futs:
        if not fut.done():
            fut.set_exception(err)
            fut.exception()  # retrieved: a read-ahead nobody waits for must not warn
    if not isinstance(e, Exception):
        raise e


def _close_page_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        page = task.result()
        if isinstance(page, DiskPage):
            page.close()

