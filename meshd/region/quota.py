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

*Tokens before bytes, one request per extent.* A transfer over a quota'd
link is one request (a ranged GET of a run of pages; one page from a peer
region's cache), whatever the quota: stores bill and throttle per request.
It is read at the quota's pace by a :class:`Pacer`: the request goes out once
the first grain's tokens and the connection's receive window are paid, then
each piece of the response is read from the socket only after its tokens, so
TCP's flow control holds the sender back and the bytes on the wire never run
ahead of the tokens. The window is bounded: connections carrying quota'd
reads get a fixed receive buffer (:attr:`Crossing.rcvbuf`, sized for one
stream's share of the quota over the path's round trip; Linux would grow it
to megabytes, which the sender would burst past the quota), the socket is
read in small, evenly spaced pieces, and a region keeps at most
REGION_STREAMS transfers open per link (:class:`Slots`, each node its share).
The grain is 1/64 of the quota (at least 16 KiB, at most 4 MiB) and the
bucket holds one grain, so over any one-second window the region moves at
most about ``quota * (1 + 1/64)`` bytes plus, per open transfer, the window
and the grain it paid ahead (``2 * rcvbuf + grain``).

*Framing.* The quota is about bytes on the wire. Each payload byte is charged
``1 + overhead`` tokens (the link's ``overhead``, default 5 %: TCP/IP and
Ethernet headers of 1500-byte frames are 4.6 %).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from meshd.attrs import AttrChange
from meshd.understore import ObjectInfo, UnderStore
from meshd.understore.base import Pace

T = TypeVar("T")

MIN_GRAIN = 16 << 10  # 8 Mbit/s: 61 grants a second
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
                 clock: Callable[[], float] = time.monotonic, latency: float = 0.0) -> None:
        self.src, self.dst = src, dst
        self.latency = latency
        self.quota = quota
        self.overhead = overhead
        self.members = max(1, members)
        self._clock = clock
        self.bucket = TokenBucket(quota if self.limited else 1.0, self.grain, clock)  # the region's
        self.local = TokenBucket(self.share if self.limited else 1.0, self.grain, clock)  # owner away
        self.streams = Slots(self.stream_share)  # this node's transfers open on the link
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

    @property
    def stream_share(self) -> int:
        """Transfers this node may have open on the link at once: its share of REGION_STREAMS.
        Each open transfer lets the store run one receive window ahead of the tokens."""
        return max(1, REGION_STREAMS // self.members)

    def update(self, quota: float, overhead: float, members: int, latency: float = 0.0) -> None:
        self.quota, self.overhead, self.members = quota, overhead, max(1, members)
        self.latency = latency
        self.streams.resize(self.stream_share)
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

    def configure(self, links: Mapping[tuple[str, str], tuple[float, ...]], members: int) -> None:
        """Set every link's (quota, overhead[, one-way latency]) and the region's live member count.
        Links no longer in the topology keep their counters but stop limiting."""
        for key, (quota, overhead, *more) in links.items():
            latency = float(more[0]) if more else 0.0
            q = self.links.get(key)
            if q is None:
                self.links[key] = LinkQuota(key[0], key[1], quota, overhead, members, self._clock, latency)
            else:
                q.update(quota, overhead, members, latency)
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
    def rate(self) -> float:
        """The tightest quota in bytes a second (inf when none limits)."""
        return min((q.quota for q in self.links if q.limited), default=math.inf)

    @property
    def rcvbuf(self) -> int:
        """The TCP receive buffer for a transfer over these links: enough for one of the
        region's REGION_STREAMS streams to carry its share of the quota over the path's
        round trip (plus a LAN's millisecond), at least MIN_RCVBUF, at most MAX_RCVBUF."""
        rtt = 2 * sum(q.latency for q in self.links) + 0.001
        want = 1.25 * self.rate / REGION_STREAMS * rtt if math.isfinite(self.rate) else MAX_RCVBUF
        return int(min(MAX_RCVBUF, max(MIN_RCVBUF, want)))

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
CHARGE_BATCH = 16 << 10  # after-the-fact charges are sent to the quota owner in batches this big


REGION_STREAMS = 4  # quota'd transfers a region keeps open on a link at once (each node its share)
PACE = 2.0  # a stream reads its socket at most this many times the quota's pace
MIN_PIECE = 16 << 10
MAX_PIECE = 128 << 10
PIECES_PER_SECOND = 512  # a paced read takes about this many pieces a second at the full quota
STREAM_BUFFER = 128 << 10  # what an aiohttp client response buffers before it stops reading


def _receive_window() -> int:
    """A new TCP connection's receive buffer (Linux: ``tcp_rmem``'s default): the bytes a
    sender may put on the wire before the reader takes any."""
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 128 << 10


RECEIVE_WINDOW = _receive_window()
MIN_RCVBUF = 64 << 10
MAX_RCVBUF = 4 << 20


class Slots:
    """A semaphore whose limit can change (membership changes a node's share)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    async def acquire(self) -> None:
        while self.used >= self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif not fut.cancelled():
                    self._wake()  # woken, then cancelled: pass the free slot on
                raise
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.used
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1


class Pacer:
    """One transfer's reads across quota'd links: tokens before bytes, pieces spaced.

    The region's tokens are taken a grain at a time (one grant from the quota owner
    per grain), each before the bytes they pay for are read from the socket: the
    first grain's before the request is even sent. The next grain's grant is asked
    for while the current one is read, so a round trip to the quota owner never
    stalls a stream. Within a grain, the socket is read ``piece`` bytes at a time,
    no faster than twice the tightest quota. Reading in small, evenly spaced pieces
    matters: Linux sizes a connection's receive window (the bytes a sender may put
    on the wire before the reader asks) by how much the reader takes per round
    trip. Read a grain at once and it grows to megabytes, which the sender then
    bursts past the quota; read at about the quota's pace and it stays near the
    quota's bandwidth-delay product, which is all the link needs to carry it.
    """

    def __init__(self, crossing: Crossing, want: int, kind: str, limit: int | None = None,
                 window: int = RECEIVE_WINDOW) -> None:
        self.crossing, self.want, self.kind = crossing, max(0, want), kind
        self.grain = crossing.grain
        self.rate = crossing.rate
        piece = int(min(MAX_PIECE, max(MIN_PIECE, self.rate / PIECES_PER_SECOND)))
        self.piece = max(1, min(piece, self.grain, limit or piece))
        self.window = window  # bytes the sender may send past what was read: paid for ahead
        self.paid = 0  # bytes whose tokens were taken
        self.done = 0  # bytes read
        self._next = 0.0  # loop time the next piece may be read at
        self._grant: asyncio.Task[int] | None = None  # the next grain's tokens, being asked for
        self._held: list[LinkQuota] = []  # links whose stream slot this transfer holds

    async def open(self) -> None:
        for q in self.crossing.links:
            await q.streams.acquire()
            self._held.append(q)

    @property
    def finished(self) -> bool:
        return self.done >= self.want

    async def _take(self, n: int) -> int:
        await self.crossing.take(n, self.kind)
        return n

    async def _pay(self, must: int, upto: Callable[[], int]) -> None:
        """Take tokens until ``must`` bytes are paid: the grant asked for ahead first, else
        up to ``upto()`` bytes at once."""
        while must > self.paid:
            if self._grant is not None:
                grant, self._grant = self._grant, None
                self.paid += await grant
            else:
                self.paid += await self._take(upto() - self.paid)

    async def ready(self) -> int:
        """Wait until the next piece may be read: the tokens of everything the sender may
        have put on the wire by then (the piece and the receive window past it) taken, and
        a piece's time since the last one. Returns the piece's size."""
        n = min(self.piece, self.want - self.done)
        must = min(self.want, self.done + n + self.window)
        await self._pay(must, lambda: min(self.want, max(must, self.paid + self.grain)))
        if self._grant is None and self.paid < self.want:
            self._grant = asyncio.ensure_future(self._take(min(self.grain, self.want - self.paid)))
        delay = self._next - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        return n

    async def took(self, n: int) -> None:
        """``n`` bytes were read (a store that read more than asked pays the rest now)."""
        self.done += n
        await self._pay(self.done, lambda: self.done)
        now = asyncio.get_running_loop().time()
        self._next = max(self._next, now) + n / (PACE * self.rate)

    async def close(self) -> None:
        """Stop asking for tokens (the transfer ended early or failed)."""
        if self._grant is not None:
            self._grant.cancel()
            await asyncio.gather(self._grant, return_exceptions=True)
            self._grant = None
        while self._held:
            self._held.pop().streams.release()


async def _aclose(it: AsyncIterator[bytes]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class ThrottledStore(UnderStore):
    """An under-store in another region: every byte takes tokens on the links it crosses.

    ``inbound()`` / ``outbound()`` give the links between this node and the
    store's home region *now* (the topology can change under an open store).
    A read is one request, read at the quota's pace (:class:`Pacer`); writes
    take tokens per grain before sending; status calls and listings are
    charged after the fact by an estimate of their size.
    """

    def __init__(self, inner: UnderStore, inbound: Callable[[], Crossing],
                 outbound: Callable[[], Crossing]) -> None:
        super().__init__(inner.uri, inner.options)
        self.inner = inner
        self.scheme = inner.scheme
        self.capabilities = inner.capabilities
        self._in, self._out = inbound, outbound
        self._rcvbuf = 0  # the receive buffer asked of the store's connections (0: none yet)
        self._limited = False  # whether the store could give them one

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

    async def get_range(self, path: str, start: int, end: int, version: str | None = None, *,
                        chunk: int | None = None) -> AsyncIterator[bytes]:
        """One request for the whole range, read at the quota's pace (:class:`Pacer`): the
        request goes out after the first grain's tokens, and the socket is read a piece
        at a time, each after its tokens. The request count does not grow as the quota
        shrinks."""
        crossing = self._in()
        if not crossing:
            async for piece in self.inner.get_range(path, start, end, version, chunk=chunk):
                yield piece
            return
        rcvbuf = crossing.rcvbuf
        window = 2 * rcvbuf if self._small_window(rcvbuf) else RECEIVE_WINDOW
        pacer = Pacer(crossing, end - start, "fill", chunk, window)
        try:
            await pacer.open()
            await pacer.ready()
            pieces = self.inner.get_range(path, start, end, version, chunk=pacer.piece)
            try:
                async for piece in pieces:
                    await pacer.took(len(piece))
                    yield piece
                    if not pacer.finished:
                        await pacer.ready()
            finally:
                await _aclose(pieces)
        finally:
            await pacer.close()

    def _small_window(self, rcvbuf: int) -> bool:
        """Ask the store for connections with a ``rcvbuf`` receive buffer (once per size)."""
        if rcvbuf != self._rcvbuf:
            self._rcvbuf = rcvbuf
            self._limited = self.inner.limit_receive_buffer(rcvbuf)
        return self._limited

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

    async def put(self, path: str, chunks: AsyncIterator[bytes], *, change: AttrChange | None = None,
                  exclusive: bool = False, if_version: str | None = None) -> ObjectInfo:
        return await self.inner.put(path, self._paced(chunks), change=change, exclusive=exclusive,
                                    if_version=if_version)

    async def put_file(self, path: str, src: str, size: int, *, change: AttrChange | None = None,
                       token: str = "", started: Callable[[str], Awaitable[None]] | None = None,
                       parallel: int = 1, pace: Pace | None = None) -> ObjectInfo:
        """A write-back upload: each part (or piece) after its tokens on the outbound link."""
        crossing = self._out()
        if crossing:
            async def paced(n: int) -> None:
                left = n
                while left > 0:
                    g = min(left, crossing.grain)
                    await crossing.take(g, "write")
                    left -= g
                if pace is not None:
                    await pace(n)

            pace_with: Pace | None = paced
        else:
            pace_with = pace
        return await self.inner.put_file(path, src, size, change=change, token=token, started=started,
                                         parallel=parallel, pace=pace_with)

    async def abort_put(self, path: str, token: str = "", *, name: str = "", since: float = 0.0) -> None:
        await self.inner.abort_put(path, token, name=name, since=since)

    async def _meta(self, result: Awaitable[T]) -> T:
        """A metadata change: one request's bytes on the outbound link."""
        got = await result
        self._out().charge(REQUEST_BYTES, "metadata")
        return got

    async def setattr(self, path: str, change: AttrChange) -> ObjectInfo:
        return await self._meta(self.inner.setattr(path, change))

    async def symlink(self, path: str, target: str, change: AttrChange | None = None) -> ObjectInfo:
        return await self._meta(self.inner.symlink(path, target, change))

    async def mknod(self, path: str, mode: int, rdev: int = 0, change: AttrChange | None = None) -> ObjectInfo:
        return await self._meta(self.inner.mknod(path, mode, rdev, change))

    async def link(self, src: str, dst: str) -> ObjectInfo:
        return await self._meta(self.inner.link(src, dst))

    async def check_absent(self, path: str) -> None:
        await self._meta(self.inner.check_absent(path))

    async def copy(self, src: str, dst: str, version: str | None = None) -> ObjectInfo:
        if type(self.inner).copy is UnderStore.copy:  # bytes through this node: paced both ways
            return await UnderStore.copy(self, src, dst, version)
        return await self._meta(self.inner.copy(src, dst, version))  # server-side: no bytes cross

    async def truncate(self, path: str, size: int, version: str | None = None) -> ObjectInfo:
        if type(self.inner).truncate is UnderStore.truncate:
            return await UnderStore.truncate(self, path, size, version)
        return await self._meta(self.inner.truncate(path, size, version))

    async def append(self, path: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        return await self.inner.append(path, self._paced(chunks))

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)
        self._out().charge(REQUEST_BYTES, "metadata")

    async def mkdir(self, path: str, change: AttrChange | None = None) -> None:
        await self.inner.mkdir(path, change)
        self._out().charge(REQUEST_BYTES, "metadata")

    async def rename(self, src: str, dst: str) -> None:
        await self.inner.rename(src, dst)
        self._out().charge(REQUEST_BYTES, "metadata")

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()
