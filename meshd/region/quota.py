"""Bandwidth quotas on the links between regions.

Each region may pull at most a link's ``quota`` bytes per second over it
(DESIGN-BRIEF invariant 3). Every byte a node moves across a link takes
tokens first: cache fills, NoCache reads, preloads, page fetches from a peer
region's cache, writes (on the link in the other direction), and listings and
status calls (charged after the fact by an estimate of their size).

*One bucket per region and link.* The region's bucket for a link lives at
the link's *quota owner*: the node the region's ring names for the key
``q:<src>><dst>``. Other nodes ask it for tokens over the metadata wire
(``quota.take``, one call per grain, a LAN round trip), so the region's
nodes share the quota by demand: a node alone in a transfer gets all of it,
two busy nodes get what they ask for in turn, and the sum never exceeds the
quota. If the owner cannot be reached, a node falls back to a local bucket
of ``quota / live members`` (the conservative split) until it can.

*Tokens before bytes.* A reader that only slowed down reading its socket
would still receive a burst as large as the TCP windows (several MiB) at
link speed. So a transfer over a quota'd link asks for at most ``grain``
bytes at a time (a ranged GET or page sub-range per grain), each after its
tokens are granted: the bytes on the wire never run ahead of the bucket by
more than a grain per transfer. The grain is 1/64 of the quota (at least
64 KiB, at most 4 MiB) and the bucket holds one grain, so over any one-second
window the region moves at most about ``quota * (1 + 2/64)`` bytes.

*Framing.* The quota is about bytes on the wire. Each payload byte is charged
``1 + overhead`` tokens (the link's ``overhead``, default 5 %: TCP/IP and
Ethernet headers of 1500-byte frames are 4.6 %).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from meshd.understore import ObjectInfo, UnderStore

MIN_GRAIN = 64 << 10
MAX_GRAIN = 4 << 20
RATE_WINDOW = 2.0  # seconds over which the "current rate" is measured


class TokenBucket:
    """A token bucket whose rate can change at any time. ``acquire`` waits its turn:
    callers are served in arrival order (a large request cannot be starved).

    Kept as the time ``_empty`` at which the bucket was (or will be) empty, as in
    GCRA: tokens now = ``(now - _empty) * rate``, at most ``capacity``. A grant moves
    ``_empty`` forward by exactly ``n / rate`` however late the waiter woke up, so
    oversleeping never loses tokens and the long-run rate is exactly ``rate``."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._empty = clock() - self.capacity / self.rate  # full
        self._lock = asyncio.Lock()
        self.waited = 0.0  # seconds callers spent waiting for tokens

    def tokens(self) -> float:
        return min(self.capacity, (self._clock() - self._empty) * self.rate)

    def set_rate(self, rate: float, capacity: float) -> None:
        have = self.tokens()
        self.rate, self.capacity = float(rate), float(capacity)
        self._empty = self._clock() - min(have, self.capacity) / self.rate

    async def acquire(self, n: float) -> float:
        """Take ``n`` tokens (more than the capacity is allowed: it is paid as debt);
        returns the seconds waited."""
        t0 = self._clock()
        async with self._lock:
            now, rate = self._clock(), self.rate
            empty = max(self._empty, now - self.capacity / rate)
            ready = empty + min(n, self.capacity) / rate  # when enough tokens are in
            if ready > now:
                await asyncio.sleep(ready - now)  # a rate change meanwhile applies to the next grant
            self._empty = empty + n / rate
        waited = self._clock() - t0
        self.waited += waited
        return waited

    def charge(self, n: float) -> None:
        """Take tokens after the fact (bytes that already moved): later callers pay."""
        self._empty = max(self._empty, self._clock() - self.capacity / self.rate) + n / self.rate


Granter = Callable[["LinkQuota", float], Awaitable[None]]


async def _local_grant(q: LinkQuota, tokens: float) -> None:
    await q.bucket.acquire(tokens)


class LinkQuota:
    """One link direction as this node uses it: the region's bucket (used when this
    node is the link's quota owner), the fallback share, and this node's counters."""

    def __init__(self, src: str, dst: str, quota: float, overhead: float, members: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.src, self.dst = src, dst
        self.quota = quota
        self.overhead = overhead
        self.members = max(1, members)
        self._clock = clock
        self.bucket = TokenBucket(quota if self.limited else 1.0, self.grain, clock)  # the region's
        self.local = TokenBucket(self.share if self.limited else 1.0, self.grain, clock)  # owner away
        self.bytes_by_kind: dict[str, int] = {}
        self._recent: deque[tuple[float, int]] = deque()
        self.waited = 0.0  # seconds this node's transfers waited for tokens
        self.remote_grants = 0  # grants asked of the quota owner
        self.fallbacks = 0  # grants taken from the local share because the owner did not answer
        self.pending_charge = 0.0  # after-the-fact tokens not yet sent to the quota owner

    @property
    def name(self) -> str:
        return f"{self.src}>{self.dst}"

    @property
    def limited(self) -> bool:
        return math.isfinite(self.quota) and self.quota > 0

    @property
    def share(self) -> float:
        """The fallback share: the quota divided by the region's live members."""
        return self.quota / self.members

    @property
    def grain(self) -> int:
        if not self.limited:
            return MAX_GRAIN
        return int(min(MAX_GRAIN, max(MIN_GRAIN, self.quota / 64)))

    def update(self, quota: float, overhead: float, members: int) -> None:
        self.quota, self.overhead, self.members = quota, overhead, max(1, members)
        if self.limited:
            self.bucket.set_rate(self.quota, self.grain)
            self.local.set_rate(self.share, self.grain)

    def _count(self, n: int, kind: str) -> None:
        self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + n
        now = self._clock()
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()

    async def take(self, n: int, kind: str, grant: Granter = _local_grant) -> None:
        """Wait for the tokens of ``n`` payload bytes about to cross."""
        if self.limited:
            t0 = self._clock()
            await grant(self, n * (1 + self.overhead))
            self.waited += self._clock() - t0
        self._count(n, kind)

    def charge(self, n: int, kind: str) -> None:
        """``n`` bytes crossed without asking first (a listing's response): paid later,
        from this node's fallback share (a few hundred bytes a call)."""
        if self.limited:
            self.local.charge(n * (1 + self.overhead))
        self._count(n, kind)

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_kind.values())

    def rate(self) -> float:
        """This node's payload bytes per second over the last RATE_WINDOW seconds."""
        now = self._clock()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW

    def report(self) -> dict[str, object]:
        return {"link": self.name, "src": self.src, "dst": self.dst,
                "quota": self.quota if self.limited else None,
                "share": self.share if self.limited else None, "members": self.members,
                "rate": self.rate(), "bytes": self.bytes, "bytes_by_kind": dict(self.bytes_by_kind),
                "throttled_seconds": self.waited, "remote_grants": self.remote_grants,
                "fallbacks": self.fallbacks}


class Quotas:
    """The link quotas a node enforces, keyed by direction (src, dst)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.links: dict[tuple[str, str], LinkQuota] = {}

    def configure(self, links: dict[tuple[str, str], tuple[float, float]], members: int) -> None:
        """Set every link's (quota, overhead) and the region's live member count.
        Links no longer in the topology keep their counters but stop limiting."""
        for key, (quota, overhead) in links.items():
            q = self.links.get(key)
            if q is None:
                self.links[key] = LinkQuota(key[0], key[1], quota, overhead, members, self._clock)
            else:
                q.update(quota, overhead, members)
        for key in set(self.links) - set(links):
            self.links[key].update(math.inf, 0.0, members)  # left the topology: counted, not limited

    def get(self, src: str, dst: str) -> LinkQuota | None:
        return self.links.get((src, dst))

    def by_name(self, name: str) -> LinkQuota | None:
        src, _, dst = name.partition(">")
        return self.links.get((src, dst))

    def report(self) -> list[dict[str, object]]:
        return [self.links[k].report() for k in sorted(self.links)]


_CHARGES: set[asyncio.Task[None]] = set()  # after-the-fact charges on their way to the quota owner


class Crossing:
    """The links one transfer crosses, in order; takes tokens on each."""

    def __init__(self, links: list[LinkQuota], grant: Granter = _local_grant) -> None:
        self.links = links
        self._grant = grant

    def __bool__(self) -> bool:
        return bool(self.links)

    @property
    def grain(self) -> int:
        return min((q.grain for q in self.links), default=MAX_GRAIN)

    @property
    def ahead(self) -> int:
        """Grains of one transfer to keep in flight: AHEAD_SECONDS of the tightest quota."""
        quota = min((q.quota for q in self.links if q.limited), default=0.0)
        if not quota:
            return 2
        return max(2, min(8, math.ceil(AHEAD_SECONDS * quota / self.grain)))

    async def take(self, n: int, kind: str) -> None:
        for q in self.links:
            await q.take(n, kind, self._grant)

    def charge(self, n: int, kind: str) -> None:
        """Bytes that already crossed (a listing): counted now, and their tokens taken from
        the region's bucket in the background, so later transfers pay for them."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): pay from the local buckets
            for q in self.links:
                q.charge(n, kind)
            return
        for q in self.links:
            q._count(n, kind)
            if q.limited:
                # Small charges (a status call: 600 bytes) are gathered and sent to the
                # quota owner as one request per CHARGE_BATCH bytes, not one each.
                q.pending_charge += n * (1 + q.overhead)
                if q.pending_charge >= CHARGE_BATCH:
                    tokens, q.pending_charge = q.pending_charge, 0.0
                    task = asyncio.ensure_future(self._grant(q, tokens))
                    _CHARGES.add(task)
                    task.add_done_callback(_CHARGES.discard)


# ---- an under-store whose bytes cross links ------------------------------------

LIST_ENTRY_BYTES = 320  # what one entry of a listing costs on the wire (S3 XML), charged after
REQUEST_BYTES = 600  # a status call or an empty listing: request and response headers
AHEAD_SECONDS = 0.1  # a read keeps about this much of the quota's worth of grains in flight
CHARGE_BATCH = 16 << 10  # after-the-fact charges are sent to the quota owner in batches this big


class ThrottledStore(UnderStore):
    """An under-store in another region: every byte takes tokens on the links it crosses.

    ``inbound()`` / ``outbound()`` give the links between this node and the
    store's home region *now* (the topology can change under an open store).
    Reads go out as ranged requests of one grain each, after their tokens;
    writes take tokens per grain before sending; status calls and listings
    are charged after the fact by an estimate of their size.
    """

    def __init__(self, inner: UnderStore, inbound: Callable[[], Crossing],
                 outbound: Callable[[], Crossing]) -> None:
        super().__init__(inner.uri, inner.options)
        self.inner = inner
        self.scheme = inner.scheme
        self.capabilities = inner.capabilities
        self._in, self._out = inbound, outbound

    async def head(self, path: str) -> ObjectInfo:
        try:
            return await self.inner.head(path)
        finally:
            self._in().charge(REQUEST_BYTES, "metadata")

    async def list(self, path: str) -> list[ObjectInfo]:
        entries: list[ObjectInfo] = []
        try:
            entries = await self.inner.list(path)
            return entries
        finally:
            self._in().charge(REQUEST_BYTES + LIST_ENTRY_BYTES * len(entries), "metadata")

    async def get_range(self, path: str, start: int, end: int,
                        version: str | None = None) -> AsyncIterator[bytes]:
        crossing = self._in()
        if not crossing:
            async for chunk in self.inner.get_range(path, start, end, version):
                yield chunk
            return
        grain = crossing.grain

        async def one(lo: int, hi: int) -> bytes:
            await crossing.take(hi - lo, "fill")
            return await self.inner.read_all(path, lo, hi, version)

        # Grain after grain, `ahead` of them in flight (about AHEAD_SECONDS of the quota, at
        # least 2): later grains wait for their tokens while earlier ones are on the wire,
        # so a stream keeps the bucket drained through event-loop stalls and round trips.
        # Every request is still sent only after its tokens are granted.
        ahead = crossing.ahead
        bounds = iter(range(start, end, grain))
        pending: deque[tuple[int, asyncio.Task[bytes]]] = deque()
        try:
            while True:
                while len(pending) < ahead:
                    lo = next(bounds, None)
                    if lo is None:
                        break
                    hi = min(end, lo + grain)
                    pending.append((hi - lo, asyncio.ensure_future(one(lo, hi))))
                if not pending:
                    return
                want, task = pending.popleft()
                data = await task
                if data:
                    yield data
                if len(data) < want:  # the object ends before `end`
                    return
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(t for _, t in pending), return_exceptions=True)

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        if not self._in():
            return await self.inner.read_all(path, start, end, version)
        return await super().read_all(path, start, end, version)

    def _paced(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, each grain sent only after its tokens on the outbound link."""
        crossing = self._out()
        if not crossing:
            return chunks

        async def paced() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                view = memoryview(chunk)
                step = crossing.grain
                for i in range(0, len(view), step):
                    piece = view[i:i + step]
                    await crossing.take(len(piece), "write")
                    yield bytes(piece) if len(view) > step else chunk

        return paced()

    async def put(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        return await self.inner.put(path, self._paced(chunks))

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        return await self.inner.append(path, self._paced(chunks))

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)
        self._out().charge(REQUEST_BYTES, "metadata")

    async def mkdir(self, path: str) -> None:
        await self.inner.mkdir(path)
        self._out().charge(REQUEST_BYTES, "metadata")

    async def rename(self, src: str, dst: str) -> None:
        await self.inner.rename(src, dst)
        self._out().charge(REQUEST_BYTES, "metadata")

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()
