"""The region's cache cluster as one node sees it: members, ring, peers.

Ownership: a metadata key (``s:<path>``, ``l:<dir>``) or a page
(``p:<file id>:<index>``) belongs to the member the consistent-hash ring
(:mod:`meshd.cluster.ring`) names for it; its successors on the ring are the
fallbacks, in the same order on every node. A peer that fails a call is
*suspected* for a few seconds: chains put it last, so one dead node costs
each reader one refused connection, not one per page. Its lease expiring
removes it from the ring for good.

Peers are reached over the metadata wire (:mod:`meshd.rpc.wire`) for metadata and
over HTTP for page bytes (the owner sends its page file with sendfile).

Liveness: a busy peer is not a dead one. A page may wait at its owner far
longer than any timeout (behind a link's quota, a slow store); the owner
answers "queued" every ``hold`` seconds meanwhile (:meth:`Cluster.fetch_page`).
A peer is presumed dead only when the connection is refused or reset, when it
stays silent for ``peer_timeout`` seconds, or when its lease leaves the
membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from meshd.cluster.membership import Member, Membership
from meshd.cluster.ring import HashRing
from meshd.errors import MeshError, NodeUnavailable, from_kind
from meshd.rpc.wire import WireClient

log = logging.getLogger(__name__)
T = TypeVar("T")

SUSPECT_SECONDS = 5.0
PEER_TIMEOUT = 15.0  # a peer silent this long (no bytes, no "queued") is presumed dead
HOLD_SECONDS = 5.0  # an owner answers "queued" after holding a page request this long (at most)


def page_timeout(peer_timeout: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=2.0, sock_connect=2.0, sock_read=peer_timeout)


def ring_of(members: Iterable[Member], vnodes: int) -> HashRing:
    """The ring of a region's members, weighted by their announced capacity (the same in
    every node of the region and in every other region that names its owners)."""
    return HashRing({m.node_id: float(m.capacity or 1) for m in members}, vnodes)


def page_url(m: Member, path: str, version: str, size: int, index: int) -> str:
    """``GET /v1/pages`` of page ``index`` of ``path`` (at ``version``, ``size`` bytes) at ``m``."""
    return (f"{m.http}/v1/pages" + quote(path, safe="/") +
            f"?index={index}&size={size}&version={quote(version, safe='')}")


class Cluster:
    def __init__(self, membership: Membership, vnodes: int = 128, peer_timeout: float = PEER_TIMEOUT,
                 token: str = "", ssl_context: ssl.SSLContext | None = None) -> None:
        self.membership = membership
        self.token = token  # the cluster token: what this node presents to its peers
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl = ssl_context  # mutual TLS towards peers (meshd.tls.node_client_context), else plain
        self.page_timeout = page_timeout(peer_timeout)
        self.hold = min(HOLD_SECONDS, peer_timeout / 3)  # well inside the silence that means dead
        self.me = membership.me
        self.vnodes = vnodes
        self.ring = HashRing([self.me.node_id], vnodes)
        self.members: dict[str, Member] = dict(membership.members)
        self._suspect: dict[str, float] = {}
        self._wires: dict[str, WireClient] = {}
        self._session: aiohttp.ClientSession | None = None
        self._paced: dict[int, aiohttp.ClientSession] = {}
        self.ring_changes = 0
        self.peer_failures = 0
        self.page_polls = 0  # "queued" answers from page owners (each one asked again)
        self.queued_seconds = 0.0  # time pages spent queued at their owners, as seen from here
        self.queued_seconds_max = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        membership.subscribe(self._on_members)
        self._on_members(membership.members)

    @property
    def single(self) -> bool:
        return len(self.members) <= 1

    def _on_members(self, members: dict[str, Member]) -> None:
        old = self.members
        self.members = dict(members)
        self.ring = ring_of(members.values(), self.vnodes)
        self.ring_changes += 1
        for node_id, m in old.items():
            if node_id not in members or members[node_id].meta != m.meta:
                wire = self._wires.pop(node_id, None)
                if wire is not None:
                    task = asyncio.ensure_future(wire.close())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
        for node_id in list(self._suspect):
            if node_id not in members:
                del self._suspect[node_id]

    # ---- ownership ---------------------------------------------------------

    def chain(self, key: bytes, n: int = 3) -> list[Member]:
        """The owner of ``key`` and its fallbacks; suspected peers go last."""
        ids = self.ring.owners(key, n)
        now = time.monotonic()
        healthy = [i for i in ids if self._suspect.get(i, 0) <= now]
        sick = [i for i in ids if self._suspect.get(i, 0) > now]
        return [self.members[i] for i in healthy + sick if i in self.members]

    def remote_chain(self, key: bytes) -> list[Member] | None:
        """The owners to ask for ``key``, or None when this node owns it (or is alone)."""
        if self.single:
            return None
        chain = self.chain(key)
        if not chain or self.is_me(chain[0]):
            return None
        return chain

    async def ask_chain(self, chain: list[Member], ask: Callable[[Member], Awaitable[T]]) -> tuple[bool, T | None]:
        """Ask the owners in ``chain`` order until one answers: ``(True, answer)``.

        A peer that cannot be reached is suspected and the next one asked. The
        walk stops at this node (it is the next owner) or at the chain's end:
        ``(False, None)``, and the caller serves the request itself. Errors a
        peer *reports* (not found, version changed, ...) propagate.
        """
        for m in chain:
            if self.is_me(m):
                break
            try:
                return True, await ask(m)
            except NodeUnavailable as e:
                self.suspect(m, e)
        return False, None

    def is_me(self, m: Member) -> bool:
        return m.node_id == self.me.node_id

    def suspect(self, m: Member, why: BaseException) -> None:
        self.peer_failures += 1
        if self._suspect.get(m.node_id, 0) <= time.monotonic():
            log.warning("peer %s (%s) unreachable, trying the next owner: %s", m.node_id, m.meta, why)
        self._suspect[m.node_id] = time.monotonic() + SUSPECT_SECONDS

    def state(self, m: Member) -> str:
        if self.is_me(m):
            return "self"
        return "suspect" if self._suspect.get(m.node_id, 0) > time.monotonic() else "up"

    # ---- peers ---------------------------------------------------------------

    def wire(self, m: Member) -> WireClient:
        w = self._wires.get(m.node_id)
        if w is None:
            w = self._wires[m.node_id] = WireClient(m.meta, ssl_context=self.ssl, token=self.token or None)
        return w

    async def call(self, m: Member, op: str, args: dict[str, Any], wait: float = 10.0) -> Any:
        return await self.wire(m).call(op, args, wait)

    async def broadcast(self, op: str, args: dict[str, Any], wait: float = 30.0,
                        include_me: bool = False) -> dict[str, Any]:
        """Call every member (but this node unless asked); per member, a result or an error."""
        targets = [m for m in self.members.values() if include_me or not self.is_me(m)]

        async def one(m: Member) -> Any:
            try:
                return await self.call(m, op, args, wait)
            except MeshError as e:
                return e

        results = await asyncio.gather(*(one(m) for m in targets))
        return {m.node_id: r for m, r in zip(targets, results, strict=True)}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.page_timeout, auto_decompress=False, headers=self._headers,
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=32, ttl_dns_cache=300,
                                               ssl=self.ssl if self.ssl is not None else True))
        return self._session

    async def fetch_page(self, m: Member, path: str, version: str, size: int, index: int,
                         warm: bool = False) -> bytes:
        """Page ``index`` of ``path`` (at ``version``, ``size`` bytes long) from its owner ``m``.

        A busy owner is not a dead one. The owner holds the request up to ``hold`` seconds
        while the page is queued behind its quota or a slow store, then answers 202
        "queued" and is asked again: each answer is a sign of life, and the wait is
        as long as the owner's queue, however long. The owner is given up on only when
        it is dead: refused or reset connections, silence for ``peer_timeout`` seconds
        (no page and no "queued"), or its lease gone from the membership."""
        url = page_url(m, path, version, size, index) + f"&hold={self.hold:g}" + ("&warm=1" if warm else "")
        who = f"peer {m.node_id}"
        t0 = time.monotonic()
        while True:
            if m.node_id not in self.members:
                raise NodeUnavailable(f"{who} left the region (its lease is gone) while page {index} "
                                      f"of {path} was queued there")
            async with self.open_page(m, url, who) as (status, body):
                if status != 202:
                    data = await body.read()
                    break
                await body.read()
            self.page_polls += 1
        waited = time.monotonic() - t0
        self.queued_seconds += waited
        self.queued_seconds_max = max(self.queued_seconds_max, waited)
        return data

    def paced_session(self, rcvbuf: int) -> aiohttp.ClientSession:
        """A session whose connections have a fixed ``rcvbuf`` TCP receive buffer, for
        transfers read at a quota's pace (the sender can run ahead by that much only)."""
        session = self._paced.get(rcvbuf)
        if session is None or session.closed:
            def small_window(addr: Any) -> socket.socket:
                family, kind, proto = addr[0], addr[1], addr[2]
                sock = socket.socket(family=family, type=kind, proto=proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                return sock

            session = self._paced[rcvbuf] = aiohttp.ClientSession(
                timeout=self.page_timeout, auto_decompress=False, headers=self._headers,
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300, socket_factory=small_window,
                                               ssl=self.ssl if self.ssl is not None else True))
        return session

    @contextlib.asynccontextmanager
    async def open_page(self, m: Member, url: str, who: str, limits: aiohttp.ClientTimeout | None = None,
                        rcvbuf: int = 0) -> AsyncIterator[tuple[int, aiohttp.StreamReader]]:
        """A ``GET /v1/pages`` at ``m``: (HTTP status, body to read at the caller's pace).
        The error the peer reports is raised rebuilt; NodeUnavailable when ``m`` cannot be
        reached or goes silent (``who`` names it in messages; ``limits``: timeouts other
        than the cluster's; ``rcvbuf``: over a connection with that receive buffer)."""
        session = self.paced_session(rcvbuf) if rcvbuf else self.session()
        try:
            async with session.get(url, timeout=limits or self.page_timeout) as resp:
                if resp.status >= 300:
                    try:
                        err = await resp.json(content_type=None)
                        raise from_kind(err.get("error", "MeshError"), err.get("message", ""))
                    except (ValueError, aiohttp.ContentTypeError):
                        raise MeshError(f"{who}: HTTP {resp.status}") from None
                yield resp.status, resp.content
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise NodeUnavailable(f"{who} at {m.http}: {type(e).__name__} {e}") from None

    async def close(self) -> None:
        for w in self._wires.values():
            await w.close()
        self._wires.clear()
        for session in [self._session, *self._paced.values()]:
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.close()
