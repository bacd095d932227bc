"""A busy owner is not a dead owner: the page protocol between the nodes of a region.

A node asks a page's owner for it with ``GET /v1/pages/...&hold=S``. The owner
answers with the page, or, while the page is still queued (behind the link's
quota, behind a slow store), with ``202 queued`` after holding the request S
seconds; the asker then asks again. So a live owner always answers within S,
and the asker waits as long as the owner's queue is, however long. It gives
the owner up (and asks the next owner in the ring) only when the owner is
dead: connection refused or reset, silence for ``peer_timeout``, or its lease
gone from the membership.

Here the owner is a small aiohttp server playing each behaviour (the client
side is the real :class:`meshd.cluster.peers.Cluster`), and the server side is
a real node core (:meth:`MeshNode.serve_page`) over a store that is gated.
End to end, with real nodes, a slowed S3 server and a shaped link between
regions: tests/test_exactly_once_load.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from meshd.cache.pages import DiskPage
from meshd.cluster.membership import Member, Membership
from meshd.cluster.peers import Cluster
from meshd.errors import NodeUnavailable, NotFound
from meshd.understore.posix import PosixUnderStore
from tests.nodeutil import NodeBox

PAGE = b"p" * 1000
PEER_TIMEOUT = 1.0  # hold = 1/3 s

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def member(node_id: str, http: str) -> Member:
    return Member(node_id=node_id, cluster="t", region="r", grpc="127.0.0.1:1", http=http,
                  meta="127.0.0.1:3")


@pytest.fixture
async def owner() -> AsyncIterator[tuple[str, dict[str, Behaviour], list[float]]]:
    """A fake owner: (its URL, the behaviour to set under "pages", the hold of each request)."""
    behaviour: dict[str, Behaviour] = {}
    holds: list[float] = []

    async def pages(request: web.Request) -> web.StreamResponse:
        holds.append(float(request.query.get("hold", "nan")))
        return await behaviour["pages"](request)

    app = web.Application()
    app.router.add_get("/v1/pages/{path:.*}", pages)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", behaviour, holds
    finally:
        await runner.cleanup()


def cluster_with(*peers: Member) -> tuple[Cluster, Membership]:
    me = member("me", "http://127.0.0.1:9")
    ms = Membership(me)
    ms._set({m.node_id: m for m in (me, *peers)})
    return Cluster(ms, peer_timeout=PEER_TIMEOUT), ms


def queued_until(ready_at: float) -> Behaviour:
    """Hold each request for its ``hold``; answer queued until ``ready_at``, then the page."""

    async def answer(request: web.Request) -> web.StreamResponse:
        hold = float(request.query["hold"])
        await asyncio.sleep(max(0.0, min(hold, ready_at - time.monotonic())))
        if time.monotonic() < ready_at:
            return web.json_response({"queued": True}, status=202)
        return web.Response(body=PAGE)

    return answer


async def test_a_queued_page_is_waited_for_far_beyond_the_peer_timeout(
        owner: tuple[str, dict[str, Behaviour], list[float]]) -> None:
    url, behaviour, holds = owner
    t0 = time.monotonic()  # before the owner's clock starts: the page cannot come sooner than 4 s after
    behaviour["pages"] = queued_until(time.monotonic() + 4 * PEER_TIMEOUT)
    c, _ = cluster_with(o := member("owner", url))
    try:
        assert await c.fetch_page(o, "/d/f", "v1", len(PAGE), 0) == PAGE
    finally:
        await c.close()
    assert time.monotonic() - t0 >= 4 * PEER_TIMEOUT
    assert c.peer_failures == 0  # never taken for dead
    assert c.page_polls >= 8  # asked again after every "queued" (4 s / 1/3 s)
    assert all(h == pytest.approx(PEER_TIMEOUT / 3, rel=1e-3) for h in holds)
    assert c.queued_seconds_max >= 4 * PEER_TIMEOUT


async def test_a_silent_owner_is_dead_after_the_peer_timeout(
        owner: tuple[str, dict[str, Behaviour], list[float]]) -> None:
    url, behaviour, _ = owner

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    behaviour["pages"] = silent
    c, _ = cluster_with(o := member("owner", url))
    t0 = time.monotonic()
    try:
        with pytest.raises(NodeUnavailable, match="owner"):
            await c.fetch_page(o, "/d/f", "v1", len(PAGE), 0)
    finally:
        await c.close()
    assert PEER_TIMEOUT * 0.9 <= time.monotonic() - t0 < PEER_TIMEOUT * 3


async def test_an_owner_whose_lease_is_gone_is_given_up_while_queued(
        owner: tuple[str, dict[str, Behaviour], list[float]]) -> None:
    url, behaviour, _ = owner
    behaviour["pages"] = queued_until(time.monotonic() + 3600)
    c, ms = cluster_with(o := member("owner", url))
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, ms._set, {"me": ms.me})  # the owner's lease expires
    try:
        with pytest.raises(NodeUnavailable, match="left the region"):
            await asyncio.wait_for(c.fetch_page(o, "/d/f", "v1", len(PAGE), 0), 5)
    finally:
        await c.close()


async def test_a_refused_connection_is_dead_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    c, _ = cluster_with(o := member("owner", f"http://127.0.0.1:{port}"))
    t0 = time.monotonic()
    try:
        with pytest.raises(NodeUnavailable):
            await c.fetch_page(o, "/d/f", "v1", len(PAGE), 0)
    finally:
        await c.close()
    assert time.monotonic() - t0 < PEER_TIMEOUT


async def test_an_error_the_owner_reports_is_not_death(
        owner: tuple[str, dict[str, Behaviour], list[float]]) -> None:
    url, behaviour, _ = owner

    async def gone(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "NotFound", "message": "no such file: /d/f"}, status=404)

    behaviour["pages"] = gone
    c, _ = cluster_with(o := member("owner", url))
    try:
        with pytest.raises(NotFound, match="no such file"):
            await c.fetch_page(o, "/d/f", "v1", len(PAGE), 0)
    finally:
        await c.close()
    assert c.peer_failures == 0


async def test_a_dead_owner_is_handed_to_exactly_one_successor(
        owner: tuple[str, dict[str, Behaviour], list[float]]) -> None:
    """The chain: a dead owner, a busy successor, a third node. The successor is waited
    for (queued twice over the peer timeout); the third node is never asked."""
    url, behaviour, holds = owner
    behaviour["pages"] = queued_until(time.monotonic() + 2 * PEER_TIMEOUT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = member("dead", f"http://127.0.0.1:{dead_port}")
    successor = member("successor", url)
    third = member("third", "http://127.0.0.1:9")  # nothing there either: must not be asked
    c, _ = cluster_with(dead, successor, third)
    asked: list[str] = []

    async def ask(m: Member) -> bytes:
        asked.append(m.node_id)
        return await c.fetch_page(m, "/d/f", "v1", len(PAGE), 0)

    try:
        answered, data = await c.ask_chain([dead, successor, third], ask)
    finally:
        await c.close()
    assert (answered, data) == (True, PAGE)
    assert asked == ["dead", "successor"]
    assert c.state(dead) == "suspect" and c.state(successor) == "up"
    assert len(holds) >= 4


class GatedStore(PosixUnderStore):
    """Reads wait until the test opens the gate; every read counted."""

    gate: asyncio.Event
    reads = 0

    async def read_all(self, path: str, start: int, end: int, version: str | None = None) -> bytes:
        GatedStore.reads += 1
        await self.gate.wait()
        return await super().read_all(path, start, end, version)


async def test_the_owner_answers_queued_and_fetches_the_page_once(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    data = os.urandom(3 * 65536)
    (store_dir / "f").write_bytes(data)
    box = NodeBox(tmp_path / "node", page_size=65536)
    node = box.open()
    try:
        await node.mounts.add("/data", f"file://{store_dir}", {})
        st = await node.stat("/data/f")
        store = GatedStore(f"file://{store_dir}", {})
        store.gate = asyncio.Event()
        GatedStore.reads = 0
        node.mounts._stores["/data"] = store
        # Three peers ask while the store is stuck: each is told "queued" after its hold.
        for _ in range(3):
            assert await node.serve_page("/data/f", st.version, st.size, 1, hold=0.1) is None
        assert node.stats.pages_held == 3
        assert GatedStore.reads == 1  # one fetch, started by the first ask, going on
        store.gate.set()
        served = await node.serve_page("/data/f", st.version, st.size, 1, hold=5)
        assert served is not None
        page, length, fetched = served
        assert length == 65536 and fetched is True  # not held when asked: the fetch brought it
        if isinstance(page, DiskPage):
            page.file.seek(0)
            body = page.file.read(length)
            page.close()
        else:
            body = bytes(page.data)
        assert body == data[65536:131072]
        assert GatedStore.reads == 1
        # Without hold the same call waits (the old protocol, still used by peer regions).
        served = await node.serve_page("/data/f", st.version, st.size, 2)
        assert served is not None and served[1] == 65536
    finally:
        await box.close()
