"""Where a node gets a page: a chain of sources, each answering "have you got it".

A page of a file opened at one version (:class:`Pinned`) is looked for, in
order, in:

1. the **tiers** of this node (memory, then disk: :class:`meshd.cache.pages.PageCache`);
2. its **owner** in the region, when that is another node (:class:`OwnerSource`:
   the ring's chain of owners, over HTTP ``/v1/pages``); a chain with no live
   node falls through to 3;
3. when this node is the owner: the **peer regions' caches** and the **home
   store**, ranked per page by the router when the mount's home is another
   region (:class:`RegionSource`), else the **under-store** directly
   (:class:`StoreSource`: consecutive missing pages as one ranged read).

Every answer is a :class:`Got`: the page and the source it came from, so a
page's origin travels with it instead of being guessed from its type. What a
reader is served is counted once, where it is delivered (:meth:`PageSources.deliver`):
bytes by source, and hits (this node's tiers) against misses (the under-store
or a peer region: the region's cache did not hold it). A page served by its
owner in the region is neither here: the owner counts it.

Single-flight holds at every level: one fetch per page key on this node (the
``flight`` table, shared by single pages and extents), and every node of the
region walks the same owner chain, so the owner's flight merges the nodes.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshd.cache.pages import DiskPage, MemPage, Page, PageCache, PageKey, SingleFlight
from meshd.cluster.membership import Member
from meshd.cluster.peers import Cluster
from meshd.errors import MeshError, NotFound, UnderStoreError, VersionChanged
from meshd.metadata.mounts import Mount
from meshd.metadata.shard import FileStatus
from meshd.metrics import Stats
from meshd.region.federation import Federation
from meshd.understore import UnderStore

log = logging.getLogger(__name__)


class Source(enum.StrEnum):
    """Where a delivered page came from (the ``source`` label of ``mesh_read_bytes``)."""

    MEMORY = "memory"
    DISK = "disk"
    PEER = "peer"  # its owner, another node of this region
    REGION = "region"  # a peer region's cache
    STORE = "understore"
    NOCACHE = "nocache"  # streamed from the under-store past the cache


HITS = frozenset({Source.MEMORY, Source.DISK})
MISSES = frozenset({Source.STORE, Source.REGION})


@dataclass(frozen=True, slots=True)
class Got:
    """A page and where it came from."""

    page: Page
    source: Source


@dataclass(frozen=True)
class Target:
    """A mesh path resolved to its mount."""

    path: str
    mount: Mount
    store: UnderStore
    rel: str


@dataclass(frozen=True)
class Pinned:
    """A file at one version: what every page of one read is asked for."""

    target: Target
    status: FileStatus
    fid: str
    vid: str

    def key(self, index: int) -> PageKey:
        return PageKey(self.fid, self.vid, index)

    def page_len(self, index: int, page_size: int) -> int:
        return max(0, min(page_size, self.status.size - index * page_size))


Futures = dict[int, "asyncio.Future[Got]"]


class StoreSource:
    """Pages read from the mount's under-store (the home store when it is in this region)."""

    def __init__(self, cache: PageCache, stats: Stats) -> None:
        self.cache = cache
        self.stats = stats

    async def page(self, f: Pinned, index: int) -> Got:
        ps = self.cache.page_size
        start = index * ps
        end = min(f.status.size, start + ps)
        t = f.target
        data = await t.store.read_all(t.rel, start, end, f.status.version)
        if len(data) != end - start:
            raise UnderStoreError(f"short read from {t.path}: page {index} "
                                  f"has {len(data)} of {end - start} bytes")
        await self.cache.put(f.key(index), data)
        self.stats.page_fetches += 1
        return Got(MemPage(data), Source.STORE)

    async def extent(self, f: Pinned, run: list[tuple[int, asyncio.Future[Got]]],
                     on_page: Callable[[], None] | None = None) -> None:
        """One ranged read for consecutive pages; each page resolves as its bytes arrive."""
        ps = self.cache.page_size
        first, last = run[0][0], run[-1][0]
        size, t = f.status.size, f.target
        futs = dict(run)
        idx, parts, have = first, [], 0
        try:
            async for chunk in t.store.get_range(t.rel, first * ps, min(size, (last + 1) * ps), f.status.version):
                while chunk:
                    want = min(ps, size - idx * ps)
                    if len(chunk) <= want - have:  # the usual, aligned case: no copy
                        take, chunk = chunk, b""
                    else:
                        take, chunk = chunk[:want - have], chunk[want - have:]
                    parts.append(take)
                    have += len(take)
                    if have == want:
                        data = parts[0] if len(parts) == 1 else b"".join(parts)
                        await self.cache.put(f.key(idx), data)
                        self.stats.page_fetches += 1
                        if on_page is not None:
                            on_page()
                        futs.pop(idx).set_result(Got(MemPage(data), Source.STORE))
                        idx, parts, have = idx + 1, [], 0
            if futs:
                raise UnderStoreError(f"short read from {t.path}: pages {sorted(futs)} missing")
        except BaseException as e:
            fail(futs.values(), e)


class OwnerSource:
    """Pages owned by another node of the region: asked of the owner, then its successors."""

    def __init__(self, cluster: Cluster, page_size: int) -> None:
        self.cluster = cluster
        self.page_size = page_size

    def chain(self, key: PageKey) -> list[Member] | None:
        """The page's owner and fallbacks, or None when this node owns it (or is alone)."""
        return self.cluster.remote_chain(f"p:{key.file_id}:{key.index}".encode())

    async def fetch(self, f: Pinned, index: int, chain: list[Member]) -> Got | None:
        """The page from the first owner of ``chain`` that answers; None if none does
        (this node is next in line, or every one is down): the caller fetches it."""
        expected = f.page_len(index, self.page_size)
        cluster = self.cluster

        async def ask(m: Member) -> bytes:
            data = await cluster.fetch_page(m, f.target.path, f.status.version, f.status.size, index)
            if len(data) != expected:
                raise UnderStoreError(f"peer {m.node_id} sent {len(data)} of {expected} bytes of page "
                                      f"{index} of {f.target.path}")
            return data

        answered, data = await cluster.ask_chain(chain, ask)
        return Got(MemPage(data), Source.PEER) if answered and data is not None else None

    async def warm(self, f: Pinned, index: int, chain: list[Member]) -> tuple[bool, bool]:
        """Have the owner cache the page (no bytes travel back): (answered, it fetched)."""
        cluster = self.cluster

        async def ask(m: Member) -> bool:
            body = await cluster.fetch_page(m, f.target.path, f.status.version, f.status.size, index, warm=True)
            return bool(json.loads(body).get("fetched"))

        answered, fetched = await cluster.ask_chain(chain, ask)
        return answered, bool(fetched)


class RegionSource:
    """For a mount homed in another region: the router's choice per page between the
    peer regions' caches and the home store (``Federation.plan``), tried in order."""

    def __init__(self, federation: Federation, cluster: Cluster, cache: PageCache, store: StoreSource) -> None:
        self.fed = federation
        self.cluster = cluster
        self.cache = cache
        self.store = store

    async def plan(self, f: Pinned, indices: list[int]) -> dict[int, list[Any]] | None:
        """Each page's sources, cheapest first; None when the home is this region."""
        cluster = self.cluster

        async def ask(m: Member, op: str, args: dict[str, Any]) -> Any:
            return await cluster.call(m, op, args, wait=5.0)

        return await self.fed.plan(f.target.mount, f.target.path, f.status.version, f.status.size,
                                   f.fid, f.vid, indices, self.cache.page_size, ask)

    async def fetch(self, f: Pinned, index: int, sources: list[Any]) -> Got:
        """The page from the first of ``sources`` that delivers it; a failing source is
        logged and the next one tried. ``VersionChanged`` is not a source's failure."""
        fed = self.fed
        last: Exception | None = None
        for src in sources:
            try:
                if src.kind == "store":
                    got = await self.store.page(f, index)
                else:
                    data = await fed.fetch_from_region(src.region, f.target.path, f.status.version,
                                                       f.status.size, f.fid, index, self.cache.page_size)
                    await self.cache.put(f.key(index), data)
                    got = Got(MemPage(data), Source.REGION)
                fed.note_routed(src.name)
                return got
            except VersionChanged:
                raise
            except MeshError as e:
                last = e
                fed.note_failed(src, f.fid, f.vid)
                log.warning("page %d of %s: source %s failed (%s); trying the next", index, f.target.path,
                            src.name, e)
        raise last if last is not None else UnderStoreError(
            f"no source can reach page {index} of {f.target.path} from region {fed.region}")


class PageSources:
    """The chain, with single-flight and the accounting of what is delivered."""

    def __init__(self, cache: PageCache, stats: Stats, cluster: Cluster | None = None,
                 federation: Federation | None = None) -> None:
        self.cache = cache
        self.stats = stats
        self.flight = SingleFlight()
        self.store = StoreSource(cache, stats)
        self.owner = OwnerSource(cluster, cache.page_size) if cluster is not None else None
        self.region = (RegionSource(federation, cluster, cache, self.store)
                       if federation is not None and cluster is not None else None)
        self._warming: set[PageKey] = set()  # read-ahead pages being warmed at their owners
        self._background: set[asyncio.Task[Any]] = set()

    # ---- accounting --------------------------------------------------------

    def deliver(self, got: Got, size: int) -> None:
        """Count a page (``size``: its length) served to a reader: the one place that does.
        Whole pages, whatever part of one the reader asked for: what the sources moved."""
        self.stats.bytes_by_source[got.source.value] += size
        if got.source in HITS:
            self.stats.hits += 1
        elif got.source in MISSES:
            self.stats.misses += 1

    # ---- one page ----------------------------------------------------------

    def _chain(self, key: PageKey) -> list[Member] | None:
        return self.owner.chain(key) if self.owner is not None else None

    async def get(self, f: Pinned, index: int, *, owned: bool = False) -> Got:
        """Page ``index`` from the first source that has it. ``owned``: serve it here
        whatever the ring says (a peer asked this node as the page's owner)."""
        key = f.key(index)
        page = await self.cache.get(key)
        if page is not None:
            return Got(page, Source.MEMORY if isinstance(page, MemPage) else Source.DISK)
        chain = None if owned else self._chain(key)
        if chain is not None:
            return await self.flight.do(key, lambda: self._via_owner(f, index, chain))
        return await self.flight.do(key, lambda: self._fetch(f, index))

    async def _via_owner(self, f: Pinned, index: int, chain: list[Member]) -> Got:
        assert self.owner is not None
        got = await self.owner.fetch(f, index, chain)
        return got if got is not None else await self._fetch(f, index)

    async def _fetch(self, f: Pinned, index: int) -> Got:
        """This node is the page's owner in the region: get it from outside the region."""
        plan = await self.region.plan(f, [index]) if self.region is not None else None
        if plan is not None and plan[index]:
            return await self.region.fetch(f, index, plan[index])  # type: ignore[union-attr]
        return await self.store.page(f, index)

    # ---- many pages (one read's window) ------------------------------------

    def launch(self, f: Pinned, indices: Iterable[int]) -> Futures:
        """Start getting pages: held ones from the tiers, a peer's from the peer, runs of
        missing pages this node owns as extents. A page in flight is waited for, never
        fetched twice (single-flight across extents)."""
        out: Futures = {}
        run: list[tuple[int, asyncio.Future[Got]]] = []
        for i in indices:
            key = f.key(i)
            if (inflight := self.flight.get(key)) is not None:
                out[i] = inflight
            elif self.cache.contains(key):
                out[i] = asyncio.ensure_future(self.get(f, i))
            else:
                fut = self.flight.claim(key)
                assert fut is not None
                out[i] = fut
                if (chain := self._chain(key)) is not None:
                    self.spawn(resolve_into(fut, self._via_owner(f, i, chain)))
                    continue
                if run and run[-1][0] != i - 1:
                    self.spawn(self._fetch_run(f, run))
                    run = []
                run.append((i, fut))
        if run:
            self.spawn(self._fetch_run(f, run))
        return out

    def prefetch(self, f: Pinned, indices: Iterable[int]) -> None:
        """Read-ahead past a sequential reader's end: held and in-flight pages are left
        alone; a peer's pages are *warmed at the peer* (no bytes come back: this node
        would not keep them, and the reader may never ask); runs of our own are fetched."""
        run: list[tuple[int, asyncio.Future[Got]]] = []
        for i in indices:
            key = f.key(i)
            if self.flight.get(key) is not None or self.cache.contains(key):
                continue
            if (chain := self._chain(key)) is not None:
                if key not in self._warming:
                    self._warming.add(key)
                    self.spawn(self._warm_quietly(f, i, chain))
                continue
            fut = self.flight.claim(key)
            assert fut is not None
            fut.add_done_callback(_retrieve)
            if run and run[-1][0] != i - 1:
                self.spawn(self._fetch_run(f, run))
                run = []
            run.append((i, fut))
        if run:
            self.spawn(self._fetch_run(f, run))

    async def _fetch_run(self, f: Pinned, run: list[tuple[int, asyncio.Future[Got]]]) -> None:
        """Consecutive missing pages this node owns. Home here: one ranged read. Homed in
        another region: the router picks each page's source; pages from a peer region's
        cache come one by one, the rest as ranged reads of the home store."""
        try:
            plan = await self.region.plan(f, [i for i, _ in run]) if self.region is not None else None
        except BaseException as e:
            fail([fut for _, fut in run], e)
            return
        if plan is None:
            await self.store.extent(f, run)
            return
        assert self.region is not None
        region = self.region
        store_run: list[tuple[int, asyncio.Future[Got]]] = []
        for i, fut in run:
            sources = plan[i]
            if sources and sources[0].kind == "store":
                if store_run and store_run[-1][0] != i - 1:
                    self.spawn(self._store_run(f, store_run, sources[0].name))
                    store_run = []
                store_run.append((i, fut))
            else:
                self.spawn(resolve_into(fut, region.fetch(f, i, sources)))
        if store_run:
            await self._store_run(f, store_run, plan[store_run[0][0]][0].name)

    async def _store_run(self, f: Pinned, run: list[tuple[int, asyncio.Future[Got]]], route: str) -> None:
        assert self.region is not None
        fed = self.region.fed
        await self.store.extent(f, run, lambda: fed.note_routed(route))

    # ---- warming (loads, read-ahead at peers) -----------------------------

    async def warm(self, f: Pinned, index: int) -> bool:
        """Have the page cached in this region (at its owner); True if it was fetched."""
        key = f.key(index)
        if self.cache.contains(key):
            return False
        chain = self._chain(key)
        if chain is not None:
            assert self.owner is not None
            answered, fetched = await self.owner.warm(f, index, chain)
            if answered:
                return fetched
            if self.cache.contains(key):
                return False
        await self.flight.do(key, lambda: self._fetch(f, index))
        return True

    async def _warm_quietly(self, f: Pinned, index: int, chain: list[Member]) -> None:
        assert self.owner is not None
        try:
            await self.owner.warm(f, index, chain)
        except MeshError as e:  # a prefetch: the read itself will report real trouble
            log.debug("read-ahead of page %d of %s failed: %s", index, f.target.path, e)
        finally:
            self._warming.discard(f.key(index))

    # ---- serving peers ------------------------------------------------------

    async def serve(self, f: Pinned, index: int, cached_only: bool = False) -> tuple[Got, bool]:
        """A page asked of this node as its owner: (the page, whether it had to be
        fetched). ``cached_only`` (a peer *region* asking): NotFound unless held here."""
        key = f.key(index)
        cached = self.cache.contains(key)
        if cached_only:
            page = await self.cache.get(key) if cached else None
            if page is None:
                raise NotFound(f"page {index} of {f.target.path} is not cached here")
            return Got(page, Source.MEMORY if isinstance(page, MemPage) else Source.DISK), False
        return await self.get(f, index, owned=True), not cached

    def held(self, f: Pinned, indices: Iterable[int]) -> list[int]:
        """Which of the pages ``indices`` this node holds."""
        return [i for i in indices if self.cache.contains(f.key(i))]

    # ---- background tasks -------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


async def resolve_into(fut: asyncio.Future[Got], coro: Awaitable[Got]) -> None:
    try:
        result = await coro
    except BaseException as e:
        fail([fut], e)
    else:
        if not fut.done():
            fut.set_result(result)


def fail(futs: Iterable[asyncio.Future[Any]], e: BaseException) -> None:
    """Fail the page futures a fetch was to resolve; a cancellation (not an Exception) is
    reported to them as an UnderStoreError and then re-raised."""
    err = e if isinstance(e, Exception) else UnderStoreError("page fetch cancelled")
    for fut in futs:
        if not fut.done():
            fut.set_exception(err)
            fut.exception()  # retrieved: a read-ahead nobody waits for must not warn
    if not isinstance(e, Exception):
        raise e


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def close_unused(fut: asyncio.Future[Any]) -> None:
    """Done-callback for a page future nobody will read: close its page file."""
    if not fut.cancelled() and fut.exception() is None:
        got = fut.result()
        if isinstance(got, Got) and isinstance(got.page, DiskPage):
            got.page.close()
