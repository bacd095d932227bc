"""Node metrics, exported in the Prometheus text format at ``/metrics``.

Each node owns a private :class:`prometheus_client.CollectorRegistry` (several
nodes can live in one test process). Counters that the node keeps anyway
(tier usage, hits, evictions) are read at scrape time by a collector rather
than mirrored, so there is one source of truth. See METRICS.md for the list.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from meshd.attrs import AttrChange
from meshd.understore import ObjectInfo, UnderStore
from meshd.understore.base import Pace

if TYPE_CHECKING:
    from meshd.cache.pages import PageCache
    from meshd.cluster.peers import Cluster
    from meshd.region.federation import Federation

SOURCES = ("memory", "disk", "peer", "region", "understore", "nocache")


class Stats:
    """Plain counters the node updates on its hot path."""

    def __init__(self) -> None:
        self.bytes_by_source: dict[str, int] = dict.fromkeys(SOURCES, 0)
        self.hits = 0
        self.misses = 0
        self.page_fetches = 0  # pages brought in from under-stores (reads, read-ahead, load)
        self.region_served = 0  # bytes of cached pages sent to nodes of other regions
        self.pages_held = 0  # peers' page requests answered "queued" (the page still on its way)
        self.understore_requests: dict[tuple[str, str], int] = defaultdict(int)
        self.understore_errors: dict[tuple[str, str], int] = defaultdict(int)
        self.understore_bytes: dict[str, int] = defaultdict(int)

    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class MetadataCounts(Protocol):
    """The node's metadata counters (:class:`~meshd.metadata.sharded.ShardedMetadata`)."""

    @property
    def write_errors(self) -> int: ...

    @property
    def forwarded(self) -> int: ...

    @property
    def fallbacks(self) -> int: ...


class UnderstoreMetrics:
    """What :class:`InstrumentedStore` counts into: the node's :class:`Stats` and the
    latency histogram (registered by :class:`Metrics`). Built before the mount table,
    which wraps every under-store it opens with :meth:`wrap`."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.seconds = Histogram(
            "mesh_understore_request_seconds", "Under-store request latency (to first byte for reads)",
            ["scheme", "op"], registry=None,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def wrap(self, store: UnderStore) -> InstrumentedStore:
        return InstrumentedStore(store, self)


class _NodeCollector(Collector):
    def __init__(self, stats: Stats, cache: PageCache, metadata: MetadataCounts,
                 cluster: Cluster | None, federation: Federation | None, writeback: Any = None) -> None:
        self._stats, self._cache, self._metadata = stats, cache, metadata
        self._writeback = writeback  # meshd.writeback.Writeback
        self._cluster = cluster  # cluster mode: members, ring, peers
        self._federation = federation  # cluster mode: links, routes

    def collect(self) -> Iterator[Any]:
        s, c = self._stats, self._cache
        m = CounterMetricFamily("mesh_read_bytes", "Bytes served to readers, by source", labels=["source"])
        for source, n in s.bytes_by_source.items():
            m.add_metric([source], n)
        yield m
        hits = CounterMetricFamily("mesh_cache_hits", "Page lookups served by a cache tier", labels=["tier"])
        hits.add_metric(["memory"], c.memory.stats.hits)
        hits.add_metric(["disk"], c.disk.stats.hits)
        yield hits
        yield CounterMetricFamily("mesh_cache_misses", "Page lookups that went to the under-store", value=s.misses)
        yield CounterMetricFamily("mesh_page_fetches", "Pages fetched from under-stores (reads, read-ahead, load)",
                                  value=s.page_fetches)
        ev = CounterMetricFamily("mesh_pages_evicted", "Pages evicted by LRU, by tier", labels=["tier"])
        ev.add_metric(["memory"], c.memory.stats.evicted_pages)
        ev.add_metric(["disk"], c.disk.stats.evicted_pages)
        yield ev
        used = GaugeMetricFamily("mesh_cache_bytes_used", "Bytes held by a cache tier", labels=["tier"])
        cap = GaugeMetricFamily("mesh_cache_bytes_capacity", "Configured capacity of a tier", labels=["tier"])
        for tier, st in (("memory", c.memory.stats), ("disk", c.disk.stats)):
            used.add_metric([tier], st.used)
            cap.add_metric([tier], st.capacity)
        yield used
        yield cap
        yield CounterMetricFamily("mesh_cache_write_errors", "Failed writes to the cache disk",
                                  value=c.disk.write_errors)
        yield CounterMetricFamily("mesh_metadata_write_errors", "Failed writes to the metadata store",
                                  value=self._metadata.write_errors)
        yield CounterMetricFamily("mesh_cache_corrupt_pages", "Cache pages that failed their checksum",
                                  value=c.disk.corrupt_pages)
        yield CounterMetricFamily("mesh_cache_verified_bytes", "Bytes of disk pages hashed (CRC-32C) before a serve",
                                  value=c.disk.verified_bytes)
        req = CounterMetricFamily("mesh_understore_requests", "Under-store requests", labels=["scheme", "op"])
        for (scheme, op), n in sorted(s.understore_requests.items()):
            req.add_metric([scheme, op], n)
        yield req
        err = CounterMetricFamily("mesh_understore_errors", "Failed under-store requests", labels=["scheme", "op"])
        for (scheme, op), n in sorted(s.understore_errors.items()):
            err.add_metric([scheme, op], n)
        yield err
        ub = CounterMetricFamily("mesh_understore_read_bytes", "Bytes read from under-stores", labels=["scheme"])
        for scheme, n in sorted(s.understore_bytes.items()):
            ub.add_metric([scheme], n)
        yield ub
        if self._writeback is not None:
            yield from self._writeback_metrics(self._writeback)
        if self._cluster is not None:
            yield from self._members(self._cluster)
        if self._federation is not None:
            yield from self._links(self._federation)

    def _writeback_metrics(self, wb: Any) -> Iterator[Any]:
        """Write-back (docs/SEMANTICS.md): what this node has acknowledged and not yet uploaded."""
        now = time.time()
        entries = list(wb.entries.values())
        files = GaugeMetricFamily("mesh_writeback_pending_files", "Acknowledged write-back files not yet in "
                                  "their store, by mount", labels=["mount"])
        pending = GaugeMetricFamily("mesh_writeback_pending_bytes", "Acknowledged write-back bytes not yet in "
                                    "their store, by mount", labels=["mount"])
        lag = GaugeMetricFamily("mesh_writeback_oldest_seconds", "Age of the oldest acknowledged write not yet in "
                                "its store (the upload lag), by mount", labels=["mount"])
        rate = GaugeMetricFamily("mesh_writeback_upload_bytes_per_second", "Recent upload rate, by mount",
                                 labels=["mount"])
        mounts: dict[str, list[Any]] = {}
        for e in entries:
            mounts.setdefault(e.mount, []).append(e)
        for mount in sorted(set(mounts) | set(wb.rate)):
            es = mounts.get(mount, [])
            files.add_metric([mount], len(es))
            pending.add_metric([mount], sum(e.size for e in es))
            lag.add_metric([mount], max((now - e.created for e in es), default=0.0))
            rate.add_metric([mount], wb.rate[mount].value() if mount in wb.rate else 0.0)
        yield from (files, pending, lag, rate)
        yield GaugeMetricFamily("mesh_writeback_budget_bytes", "The write-back budget (bytes acknowledged and "
                                "not yet uploaded, at most)", value=wb.budget.limit)
        yield GaugeMetricFamily("mesh_writeback_budget_used_bytes", "Bytes of the write-back budget in use",
                                value=wb.budget.used)
        yield GaugeMetricFamily("mesh_writeback_writers_waiting", "Writers waiting for room in the budget",
                                value=wb.budget.waiting)
        yield CounterMetricFamily("mesh_writeback_budget_wait_seconds", "Seconds writers waited for room in the "
                                  "budget", value=wb.budget.waited_seconds)
        yield CounterMetricFamily("mesh_writeback_uploaded_files", "Write-back files uploaded to their store",
                                  value=wb.uploaded_files)
        yield CounterMetricFamily("mesh_writeback_uploaded_bytes", "Write-back bytes uploaded to their store",
                                  value=wb.uploaded_bytes)
        yield CounterMetricFamily("mesh_writeback_retries", "Write-back uploads that failed and were retried",
                                  value=wb.retries)
        yield CounterMetricFamily("mesh_writeback_superseded", "Write-back files never uploaded: replaced, "
                                  "removed or renamed over before their upload", value=wb.superseded)
        yield GaugeMetricFamily("mesh_writeback_failing_files", "Pending files whose last upload attempt failed",
                                value=sum(1 for e in entries if e.error))

    def _members(self, c: Cluster) -> Iterator[Any]:
        md = self._metadata
        yield GaugeMetricFamily("mesh_cluster_members", "Live members of this node's region (its view)",
                                value=len(c.members))
        yield GaugeMetricFamily("mesh_cluster_etcd_up", "1 while etcd answers this node's keep-alives",
                                value=int(c.membership.etcd_ok))
        yield CounterMetricFamily("mesh_cluster_ring_changes", "Membership changes that rebuilt the ring",
                                  value=c.ring_changes)
        yield CounterMetricFamily("mesh_cluster_peer_failures",
                                  "Calls to a peer that failed (refused, reset, timed out)",
                                  value=c.peer_failures)
        yield CounterMetricFamily("mesh_cluster_page_polls",
                                  "Pages asked of their owner again after a 'queued' answer",
                                  value=c.page_polls)
        yield CounterMetricFamily("mesh_cluster_page_queued_seconds",
                                  "Seconds this node's page requests waited at their owners",
                                  value=c.queued_seconds)
        yield CounterMetricFamily("mesh_metadata_forwarded", "Metadata calls sent to the key's owner",
                                  value=md.forwarded)
        yield CounterMetricFamily("mesh_metadata_fallbacks",
                                  "Metadata calls served here because no owner answered",
                                  value=md.fallbacks)

    def _links(self, fed: Federation) -> Iterator[Any]:
        by = CounterMetricFamily("mesh_link_bytes", "Payload bytes this node moved over a link between "
                                 "regions, by kind (fill, region, write, metadata)", labels=["link", "kind"])
        throttled = CounterMetricFamily("mesh_link_throttled_seconds",
                                        "Seconds transfers waited for quota tokens", labels=["link"])
        share = GaugeMetricFamily("mesh_link_quota_bytes_per_second",
                                  "This node's share of the link's quota (quota / live members of the region)",
                                  labels=["link"])
        rate = GaugeMetricFamily("mesh_link_rate_bytes_per_second",
                                 "This node's payload rate over the link, last 2 s", labels=["link"])
        for q in fed.quotas.links.values():
            for kind, n in sorted(q.bytes_by_kind.items()):
                by.add_metric([q.name, kind], n)
            throttled.add_metric([q.name], q.waited)
            if q.limited:
                share.add_metric([q.name], q.share)
            rate.add_metric([q.name], q.rate())
        routed = CounterMetricFamily("mesh_route_pages", "Pages fetched into this region, by the source "
                                     "the router chose (cache:<region> | store:<home region>)", labels=["source"])
        for source, n in sorted(fed.routed.items()):
            routed.add_metric([source], n)
        yield from (by, throttled, share, rate, routed)
        yield CounterMetricFamily("mesh_route_fallbacks", "Sources that failed; the next one was tried",
                                  value=fed.fallbacks)
        yield CounterMetricFamily("mesh_region_served_bytes", "Cached bytes sent to nodes of other regions",
                                  value=self._stats.region_served)


class Metrics:
    """The node's registry: the collector (everything read at scrape time) and the
    under-store latency histogram. Built once the node's parts exist, from all of them."""

    def __init__(self, understore: UnderstoreMetrics, cache: PageCache, metadata: MetadataCounts,
                 cluster: Cluster | None = None, federation: Federation | None = None,
                 writeback: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(understore.stats, cache, metadata, cluster, federation, writeback))
        self.registry.register(understore.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class InstrumentedStore(UnderStore):
    """Wraps an under-store; counts requests, errors, bytes and latency."""

    def __init__(self, inner: UnderStore, metrics: UnderstoreMetrics) -> None:
        super().__init__(inner.uri, inner.options)
        self.inner, self._m = inner, metrics
        self.scheme = inner.scheme
        self.capabilities = inner.capabilities

    async def sweep_tmp(self, max_age: float) -> int:
        return await self.inner.sweep_tmp(max_age)

    def _done(self, op: str, t0: float, ok: bool) -> None:
        self._m.stats.understore_requests[(self.scheme, op)] += 1
        if not ok:
            self._m.stats.understore_errors[(self.scheme, op)] += 1
        self._m.seconds.labels(self.scheme, op).observe(time.perf_counter() - t0)

    async def _call(self, op: str, coro: Any) -> Any:
        t0 = time.perf_counter()
        try:
            result = await coro
        except BaseException:
            self._done(op, t0, False)
            raise
        self._done(op, t0, True)
        return result

    async def head(self, path: str) -> ObjectInfo:
        result: ObjectInfo = await self._call("head", self.inner.head(path))
        return result

    async def list(self, path: str) -> list[ObjectInfo]:
        result: list[ObjectInfo] = await self._call("list", self.inner.list(path))
        return result

    async def get_range(self, path: str, start: int, end: int,
                        version: str | None = None, *, chunk: int | None = None) -> AsyncIterator[bytes]:
        t0 = time.perf_counter()
        first = True
        try:
            async for piece in self.inner.get_range(path, start, end, version, chunk=chunk):
                if first:
                    self._done("get", t0, True)
                    first = False
                self._m.stats.understore_bytes[self.scheme] += len(piece)
                yield piece
        except BaseException:
            if first:
                self._done("get", t0, False)
            raise
        if first:
            self._done("get", t0, True)

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        data: bytes = await self._call("get", self.inner.read_all(path, start, end, version))
        self._m.stats.understore_bytes[self.scheme] += len(data)
        return data

    async def put_file(self, path: str, src: str, size: int, *, change: AttrChange | None = None,
                       token: str = "", started: Callable[[str], Awaitable[None]] | None = None,
                       parallel: int = 1, pace: Pace | None = None) -> ObjectInfo:
        result: ObjectInfo = await self._call("put", self.inner.put_file(
            path, src, size, change=change, token=token, started=started, parallel=parallel, pace=pace))
        return result

    async def abort_put(self, path: str, token: str = "", *, name: str = "", since: float = 0.0) -> None:
        await self.inner.abort_put(path, token, name=name, since=since)

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        result: ObjectInfo = await self._call("put", self.inner.put(path, chunks, change=change,
                                                                    exclusive=exclusive, if_version=if_version))
        return result

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        result: ObjectInfo = await self._call("setattr", self.inner.setattr(path, change))
        return result

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        result: ObjectInfo = await self._call("symlink", self.inner.symlink(path, target, change))
        return result

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> ObjectInfo:
        result: ObjectInfo = await self._call("mknod", self.inner.mknod(path, mode, rdev, change))
        return result

    async def link(self, src: str, dst: str) -> ObjectInfo:
        result: ObjectInfo = await self._call("link", self.inner.link(src, dst))
        return result

    async def copy(self, src: str, dst: str, version: str | None = None) -> ObjectInfo:
        result: ObjectInfo = await self._call("copy", self.inner.copy(src, dst, version))
        return result

    async def truncate(self, path: str, size: int, version: str | None = None) -> ObjectInfo:
        result: ObjectInfo = await self._call("truncate", self.inner.truncate(path, size, version))
        return result

    async def check_absent(self, path: str) -> None:
        await self.inner.check_absent(path)

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        result: ObjectInfo = await self._call("append", self.inner.append(path, chunks))
        return result

    async def delete(self, path: str) -> None:
        await self._call("delete", self.inner.delete(path))

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        await self._call("mkdir", self.inner.mkdir(path, change))

    async def rename(self, src: str, dst: str) -> None:
        await self._call("rename", self.inner.rename(src, dst))

    async def check(self) -> None:
        await self._call("check", self.inner.check())

    async def close(self) -> None:
        await self.inner.close()
