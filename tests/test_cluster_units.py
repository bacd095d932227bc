"""Fast unit tests of the cluster layer's pieces: ring, metadata wire, member
records, cluster configuration, the metadata cache's paged listings and the
``meshd run`` flag checks. No subprocess, no etcd: everything in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from meshd.cli import meshd as cli_meshd
from meshd.cluster.membership import EtcdMembership, Member, members_prefix
from meshd.cluster.ring import HashRing, moved_fraction
from meshd.config import ClusterConfig, check_cluster, from_dict
from meshd.errors import InvalidArgument, MeshError, NodeUnavailable, NotFound
from meshd.metadata.kv import MemoryKV
from meshd.metadata.mounts import Mount
from meshd.metadata.shard import FileStatus, MetadataCache
from meshd.rpc.wire import HEADER, MAX_FRAME, SyncWireClient, WireClient, WireServer
from meshd.understore import ObjectInfo, UnderStore

# ---------------------------------------------------------------------------
# ring
# ---------------------------------------------------------------------------

KEYS = [f"/data/file-{i}".encode() for i in range(50_000)]


def _nodes(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


def test_ring_owners_are_distinct_and_start_with_owner() -> None:
    ring = HashRing(_nodes(5))
    for key in KEYS[:2000]:
        owner = ring.owner(key)
        for n in (1, 2, 3, 5):
            got = ring.owners(key, n)
            assert len(got) == n
            assert len(set(got)) == n
            assert got[0] == owner
        assert ring.owners(key, 3) == ring.owners(key, 5)[:3]  # a prefix: the same succession
        assert sorted(ring.owners(key, 99)) == _nodes(5)  # never more than the members


def test_ring_is_deterministic_across_instances_and_member_order() -> None:
    a = HashRing(_nodes(6))
    b = HashRing(list(reversed(_nodes(6))))
    c = HashRing({m: 1.0 for m in _nodes(6)})
    owners = [a.owner(k) for k in KEYS[:5000]]
    assert owners == [b.owner(k) for k in KEYS[:5000]] == [c.owner(k) for k in KEYS[:5000]]
    assert [a.owners(k, 3) for k in KEYS[:500]] == [b.owners(k, 3) for k in KEYS[:500]]
    assert len(set(owners)) == 6  # every member owns something
    assert a.members == b.members and len(a) == 6 and "node-3" in a and "node-9" not in a


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_join_moves_about_one_share_and_only_to_the_newcomer(n: int) -> None:
    before = HashRing(_nodes(n))
    after = HashRing([*_nodes(n), "newcomer"])
    old = [before.owner(k) for k in KEYS]
    new = [after.owner(k) for k in KEYS]
    moved = [(o, m) for o, m in zip(old, new, strict=True) if o != m]
    frac = moved_fraction(before, after, KEYS)
    assert frac == len(moved) / len(KEYS)
    assert 0 < frac <= 1.2 / (n + 1)
    assert all(m == "newcomer" for _, m in moved)  # nothing moves between old nodes


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_leave_moves_only_the_leavers_keys(n: int) -> None:
    before = HashRing(_nodes(n))
    gone = "node-1"
    after = HashRing([m for m in _nodes(n) if m != gone])
    old = [before.owner(k) for k in KEYS]
    new = [after.owner(k) for k in KEYS]
    moved = [(o, m) for o, m in zip(old, new, strict=True) if o != m]
    frac = moved_fraction(before, after, KEYS)
    assert frac == len(moved) / len(KEYS)
    assert 0 < frac <= 1.2 / n
    assert all(o == gone for o, _ in moved)
    assert len(moved) == old.count(gone)  # and every key of the leaver moved
    # the successor list already named the new owner: owners(k, 2)[1] takes over
    for k in KEYS[:3000]:
        first, second = before.owners(k, 2)
        if first == gone:
            assert after.owner(k) == second


def test_ring_weights_give_more_keys_to_heavier_members() -> None:
    ring = HashRing({"big": 2.0, "small": 1.0})
    counts = {"big": 0, "small": 0}
    for k in KEYS[:20_000]:
        owner = ring.owner(k)
        assert owner is not None
        counts[owner] += 1
    assert counts["big"] > 1.5 * counts["small"]
    even = HashRing({"big": 1.0, "small": 1.0})
    even_big = sum(even.owner(k) == "big" for k in KEYS[:20_000])
    assert counts["big"] > even_big + 2000


def test_ring_empty() -> None:
    for ring in (HashRing(), HashRing([]), HashRing({})):
        assert ring.owner(b"k") is None
        assert ring.owners(b"k", 3) == []
        assert len(ring) == 0
    assert moved_fraction(HashRing(), HashRing(["a"]), []) == 0.0
    assert moved_fraction(HashRing(), HashRing(["a"]), [b"x", b"y"]) == 1.0
    single = HashRing(["only"])
    assert single.owner(b"k") == "only" and single.owners(b"k", 3) == ["only"]


# ---------------------------------------------------------------------------
# metadata wire
# ---------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _listening_socket() -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def _serving(handlers: dict[str, Handler]) -> AsyncIterator[tuple[WireServer, str]]:
    sock, address = _listening_socket()
    server = WireServer(handlers)
    await server.start(sock)
    try:
        yield server, address
    finally:
        await server.stop()


async def _echo(args: dict[str, Any]) -> Any:
    return {"got": args}


async def _missing(args: dict[str, Any]) -> Any:
    raise NotFound(f"no such file: {args.get('p')}")


async def _broken(args: dict[str, Any]) -> Any:
    raise RuntimeError("secret internal detail")


async def _sleep(args: dict[str, Any]) -> Any:
    await asyncio.sleep(float(args["s"]))
    return "slept"


HANDLERS: dict[str, Handler] = {"echo": _echo, "missing": _missing, "broken": _broken, "sleep": _sleep}


def _closed_port_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


async def test_wire_round_trip_async_and_sync() -> None:
    args = {"p": "/m/dir/ünïcødé", "n": 3, "list": [1, 2.5, None, True], "nested": {"a": {"b": "c"}}}
    async with _serving(HANDLERS) as (_, address):
        client = WireClient(address)
        try:
            assert await client.call("echo", args) == {"got": args}
            assert await client.call("echo", {}) == {"got": {}}
        finally:
            await client.close()

        def blocking() -> list[Any]:
            sync = SyncWireClient(address)
            try:
                out = [sync.call("echo", args), sync.call("echo", {"i": 2})]
                with pytest.raises(NotFound, match="no such file: /x"):
                    sync.call("missing", {"p": "/x"})
                out.append(sync.call("echo", {"after": "error"}))  # connection still usable
                return out
            finally:
                sync.close_thread()

        got = await asyncio.to_thread(blocking)
        assert got == [{"got": args}, {"got": {"i": 2}}, {"got": {"after": "error"}}]


async def test_wire_pipelined_calls_get_their_own_replies() -> None:
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.03) for _ in range(300)]
    finished: list[int] = []

    async def work(args: dict[str, Any]) -> Any:
        await asyncio.sleep(delays[args["i"]])
        finished.append(args["i"])
        return {"i": args["i"], "sq": args["i"] ** 2}

    async with _serving({"work": work}) as (_, address):
        client = WireClient(address)
        try:
            results = await asyncio.gather(*(client.call("work", {"i": i}) for i in range(300)))
        finally:
            await client.close()
    assert results == [{"i": i, "sq": i * i} for i in range(300)]
    assert sorted(finished) == list(range(300))
    assert finished != list(range(300))  # replies really came back out of order


async def test_wire_errors_keep_their_kind_and_message() -> None:
    async with _serving(HANDLERS) as (_, address):
        client = WireClient(address)
        try:
            with pytest.raises(NotFound, match="no such file: /m/gone"):
                await client.call("missing", {"p": "/m/gone"})
            with pytest.raises(InvalidArgument):
                await client.call("no-such-op", {})
            assert await client.call("echo", {"ok": 1}) == {"got": {"ok": 1}}
        finally:
            await client.close()


async def test_wire_internal_error_is_opaque_and_server_keeps_serving(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="meshd.rpc.wire")
    async with _serving(HANDLERS) as (_, address):
        client = WireClient(address)
        try:
            with pytest.raises(MeshError, match="internal error") as info:
                await client.call("broken", {})
            assert type(info.value) is MeshError
            assert "secret internal detail" not in str(info.value)
            # the server logged it, and still answers, on this connection and on new ones
            assert any("internal error" in r.getMessage() for r in caplog.records)
            assert await client.call("echo", {"x": 1}) == {"got": {"x": 1}}
            other = WireClient(address)
            try:
                assert await other.call("echo", {"y": 2}) == {"got": {"y": 2}}
            finally:
                await other.close()
        finally:
            await client.close()


async def test_wire_connect_to_closed_port_fails_fast() -> None:
    address = _closed_port_address()
    client = WireClient(address, connect_timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailable, match=address):
        await client.call("echo", {})
    with pytest.raises(NodeUnavailable):  # and again: a failed connect is not cached as a success
        await client.call("echo", {})
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(NodeUnavailable, match=address):
        await asyncio.to_thread(SyncWireClient(address, timeout=2.0).call, "echo", {})
    assert time.monotonic() - t0 < 4.0


async def test_wire_call_times_out_and_connection_stays_usable() -> None:
    async with _serving(HANDLERS) as (_, address):
        client = WireClient(address)
        try:
            t0 = time.monotonic()
            with pytest.raises(NodeUnavailable, match="did not answer sleep"):
                await client.call("sleep", {"s": 0.6}, wait=0.2)
            assert time.monotonic() - t0 < 0.5
            # the late reply to the timed-out request must not be taken for another one
            assert await client.call("sleep", {"s": 0.7}) == "slept"
            assert await client.call("echo", {"z": 1}) == {"got": {"z": 1}}
        finally:
            await client.close()


async def test_wire_server_stopped_mid_call_does_not_hang() -> None:
    # stop() cuts established connections too: the in-flight call fails at once,
    # long before the client's own ``wait`` would end it.
    sock, address = _listening_socket()
    server = WireServer(HANDLERS)
    await server.start(sock)
    client = WireClient(address)
    try:
        assert await client.call("echo", {}) == {"got": {}}
        task = asyncio.ensure_future(client.call("sleep", {"s": 30}, wait=20))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await server.stop()
        with pytest.raises(NodeUnavailable, match="lost"):
            await asyncio.wait_for(task, 5)
        assert time.monotonic() - t0 < 2
        with pytest.raises(NodeUnavailable):  # a new connection is refused
            await WireClient(address).call("echo", {})
    finally:
        await client.close()
        await asyncio.sleep(0.05)  # let the server side see the close and cancel its handler


async def test_wire_connection_lost_fails_pending_calls_and_reconnects() -> None:
    connections = 0

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            while True:
                size, req_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                await reader.readexactly(size)
                if first:
                    break  # drop the connection with a call in flight
                raw = json.dumps({"r": "pong"}).encode()
                writer.write(HEADER.pack(len(raw), req_id) + raw)
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(flaky, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = WireClient(address)
    try:
        t0 = time.monotonic()
        with pytest.raises(NodeUnavailable, match="lost"):
            await client.call("ping", {}, wait=5)
        assert time.monotonic() - t0 < 2.0
        assert await client.call("ping", {}, wait=5) == "pong"
        assert connections == 2
    finally:
        await client.close()
        server.close()


async def _raw_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        req_id: int, body: bytes) -> tuple[int, Any]:
    writer.write(HEADER.pack(len(body), req_id) + body)
    await writer.drain()
    size, got_id = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), 3))
    return got_id, json.loads(await asyncio.wait_for(reader.readexactly(size), 3))


async def test_wire_malformed_frames_get_error_replies() -> None:
    async with _serving(HANDLERS) as (_, address):
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            bad_bodies = [b"{garbage", b"\xff\xfe\x00", b"null", b"42", b'"ab"', b"[1, 2, 3]",
                          b'[["echo"], {}]', b'["echo", [1, 2]]', b'["echo", "args"]', b""]
            for i, body in enumerate(bad_bodies, start=100):
                got_id, reply = await _raw_exchange(reader, writer, i, body)
                assert got_id == i
                assert reply.get("e") == "InvalidArgument", (body, reply)
                assert "r" not in reply
            # the same connection still serves good requests
            got_id, reply = await _raw_exchange(reader, writer, 5, b'["echo", {"k": "v"}]')
            assert (got_id, reply) == (5, {"r": {"got": {"k": "v"}}})
            # a frame announcing more than MAX_FRAME bytes closes the connection
            writer.write(struct.pack("!II", MAX_FRAME + 1, 9) + b"x" * 16)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 3) == b""
        finally:
            writer.close()
        client = WireClient(address)  # and the server still accepts and serves others
        try:
            assert await client.call("echo", {"still": "up"}) == {"got": {"still": "up"}}
        finally:
            await client.close()


# ---------------------------------------------------------------------------
# member records and their checks
# ---------------------------------------------------------------------------

ME = Member(node_id="n1", cluster="c1", region="r1", grpc="10.0.0.1:7000",
            http="http://10.0.0.1:7001", meta="10.0.0.1:7002", zone="z1", capacity=1 << 30,
            labels={"gpu": "a100"}, host="host-a", data_dir="/var/mesh", pid=42, started=1.5,
            endpoints={"s3": "http://10.0.0.1:9000"})


def _record(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(ME.to_json())
    d.update(changes)
    return d


def _without(key: str) -> dict[str, Any]:
    d = _record()
    del d[key]
    return d


def test_member_record_round_trip_and_unknown_fields() -> None:
    assert Member.from_record(ME.to_json()) == ME
    d = _record(future_field={"x": 1}, another=[1, 2])
    assert Member.from_record(json.dumps(d).encode()) == ME
    minimal = {k: _record()[k] for k in ("node_id", "cluster", "region", "grpc", "http", "meta")}
    m = Member.from_record(json.dumps(minimal).encode())
    assert (m.node_id, m.grpc, m.capacity, m.labels, m.zone) == ("n1", "10.0.0.1:7000", 0, {}, "")
    assert Member.from_record(json.dumps(_record(http="https://h:1", grpc="[::1]:7000")).encode()).http \
        == "https://h:1"


@pytest.mark.parametrize(("raw", "problem"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"a string"', "not a JSON object"),
    (b"null", "not a JSON object"),
    *[(json.dumps(_without(k)).encode(), repr(k))
      for k in ("node_id", "cluster", "region", "grpc", "http", "meta")],
    (json.dumps(_record(node_id="")).encode(), "'node_id'"),
    (json.dumps(_record(region=7)).encode(), "'region'"),
    (json.dumps(_record(grpc="10.0.0.1")).encode(), "'grpc' is not host:port"),
    (json.dumps(_record(grpc="10.0.0.1:")).encode(), "'grpc' is not host:port"),
    (json.dumps(_record(grpc=":7000")).encode(), "'grpc' is not host:port"),
    (json.dumps(_record(grpc="h:port")).encode(), "'grpc' is not host:port"),
    (json.dumps(_record(meta="nowhere")).encode(), "'meta' is not host:port"),
    (json.dumps(_record(http="10.0.0.1:7001")).encode(), "'http' is not a URL"),
    (json.dumps(_record(http="ftp://h:1")).encode(), "'http' is not a URL"),
    (json.dumps(_record(capacity="1GiB")).encode(), "capacity"),
    (json.dumps(_record(capacity=1.5)).encode(), "capacity"),
    (json.dumps(_record(labels=["a"])).encode(), "labels"),
])
def test_member_record_problems_are_named(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Member.from_record(raw)


def _membership() -> EtcdMembership:
    return EtcdMembership(cast(Any, object()), ME, 10)  # _check never touches etcd


def _key(node_id: str) -> bytes:
    return (members_prefix("c1", "r1") + node_id).encode()


def test_membership_check_accepts_good_records() -> None:
    ms = _membership()
    other = replace(ME, node_id="n2", grpc="10.0.0.2:7000", http="http://10.0.0.2:7001",
                    meta="10.0.0.2:7002", host="host-b")
    assert ms._check(_key("n2"), other.to_json(), 5) == other
    assert ms._check(_key("n1"), ME.to_json(), 6) == ME  # our own record
    assert ms.key == _key("n1")


@pytest.mark.parametrize(("record", "key_id", "reason"), [
    (_record(node_id="n2", cluster="c2"), "n2", "cluster 'c2'"),
    (_record(node_id="n2", region="r2"), "n2", "region 'r2'"),
    (_record(node_id="n3"), "n2", "differs from its key"),
    (_record(grpc="10.9.9.9:7000", meta="10.9.9.9:7002", http="http://10.9.9.9:7001"), "n1",
     "this node's id"),
    (_record(node_id="n2", grpc="bad"), "n2", "host:port"),
])
def test_membership_check_rejects_and_logs_once(
        caplog: pytest.LogCaptureFixture, record: dict[str, Any], key_id: str, reason: str) -> None:
    caplog.set_level(logging.ERROR, logger="meshd.cluster.membership")
    ms = _membership()
    raw = json.dumps(record).encode()
    key = _key(key_id)
    for _ in range(3):
        assert ms._check(key, raw, 11) is None
    logged = [r for r in caplog.records if r.name == "meshd.cluster.membership"]
    assert len(logged) == 1
    assert key.decode() in logged[0].getMessage() and reason in logged[0].getMessage()
    assert ms._check(key, raw, 12) is None  # a new revision of the same bad key: logged again
    assert len([r for r in caplog.records if r.name == "meshd.cluster.membership"]) == 2
    good = replace(ME, node_id="n5", grpc="10.0.0.5:7000")
    assert ms._check(_key("n5"), good.to_json(), 11) == good
    assert len([r for r in caplog.records if r.name == "meshd.cluster.membership"]) == 2


# ---------------------------------------------------------------------------
# cluster configuration
# ---------------------------------------------------------------------------

GOOD_CLUSTER: dict[str, Any] = {"etcd": ["etcd-1:2379", "http://etcd-2:2379"], "name": "prod.eu",
                                "region": "eu-west-1", "zone": "eu-west-1a", "node_id": "node_7",
                                "labels": {"gpu": "a100", "rack": 12}, "lease_ttl": 5,
                                "capacity": "1GiB", "meta_port": "7100"}


def test_cluster_config_from_dict() -> None:
    cc = from_dict({"cluster": GOOD_CLUSTER}).cluster
    assert cc.enabled
    assert cc.etcd == ("etcd-1:2379", "http://etcd-2:2379")
    assert (cc.name, cc.region, cc.zone, cc.node_id) == ("prod.eu", "eu-west-1", "eu-west-1a", "node_7")
    assert cc.labels == {"gpu": "a100", "rack": "12"}
    assert (cc.lease_ttl, cc.capacity, cc.meta_port) == (5, 1 << 30, 7100)
    comma = from_dict({"cluster": {**GOOD_CLUSTER, "etcd": "a:1,http://b:2"}}).cluster
    assert comma.etcd == ("a:1", "http://b:2")
    assert not from_dict({}).cluster.enabled
    assert not from_dict({"cluster": {"name": "c"}}).cluster.enabled  # no etcd: no region needed


def test_cluster_config_unknown_key_is_named() -> None:
    with pytest.raises(InvalidArgument, match="regoin"):
        from_dict({"cluster": {**GOOD_CLUSTER, "regoin": "x"}})
    with pytest.raises(InvalidArgument, match="mapping"):
        from_dict({"cluster": ["etcd:1"]})


@pytest.mark.parametrize("key", ["name", "region", "zone", "node_id"])
@pytest.mark.parametrize("bad", ["a/b", "../x", ".hidden", "-x", "a b", "x" * 64, "a\x00b", "é"])
def test_cluster_names_that_could_escape_keys_are_refused(key: str, bad: str) -> None:
    with pytest.raises(InvalidArgument, match=f"cluster.{key}"):
        from_dict({"cluster": {**GOOD_CLUSTER, key: bad}})
    with pytest.raises(InvalidArgument, match=f"cluster.{key}"):
        check_cluster(ClusterConfig(**cast(dict[str, Any], {key: bad})))


@pytest.mark.parametrize("key", ["name", "region"])
def test_cluster_mode_needs_name_and_region(key: str) -> None:
    with pytest.raises(InvalidArgument, match=f"cluster.{key}"):
        from_dict({"cluster": {**GOOD_CLUSTER, key: ""}})
    d = dict(GOOD_CLUSTER)
    del d[key]
    with pytest.raises(InvalidArgument, match=f"cluster.{key}"):
        from_dict({"cluster": d})


@pytest.mark.parametrize("endpoint", ["localhost", "h:port", "http://h:1/v3/kv", "h:1:2", "ftp://h:1",
                                      "a b:1", "/tmp/etcd.sock"])
def test_cluster_bad_etcd_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument, match="etcd endpoint"):
        from_dict({"cluster": {**GOOD_CLUSTER, "etcd": ["ok:2379", endpoint]}})


@pytest.mark.parametrize("ttl", [0, -1, 3601, "ten", None])
def test_cluster_bad_lease_ttl_is_refused(ttl: Any) -> None:
    with pytest.raises(InvalidArgument, match="lease_ttl"):
        from_dict({"cluster": {**GOOD_CLUSTER, "lease_ttl": ttl}})


def test_cluster_bad_capacity_and_labels_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="capacity"):
        from_dict({"cluster": {**GOOD_CLUSTER, "capacity": "lots"}})
    with pytest.raises(InvalidArgument, match="labels"):
        from_dict({"cluster": {**GOOD_CLUSTER, "labels": ["gpu"]}})


# ---------------------------------------------------------------------------
# metadata cache: paged listings, forget_subtree, on_load
# ---------------------------------------------------------------------------

MOUNT = Mount("/m", "file:///x", {"sync_interval": "-1"})


class FakeStore:
    """Just enough of an under-store for the metadata cache; counts list calls."""

    def __init__(self, tree: dict[str, list[str]]) -> None:
        self.tree = tree  # rel dir -> child names (a trailing "/" marks a directory)
        self.lists: list[str] = []
        self.heads: list[str] = []

    def _info(self, rel: str, name: str) -> ObjectInfo:
        is_dir = name.endswith("/")
        name = name.rstrip("/")
        path = f"{rel}/{name}" if rel else name
        return ObjectInfo(path=path, size=0 if is_dir else len(name), mtime=1000.0 + len(name),
                          version="" if is_dir else f"v-{name}", is_dir=is_dir)

    async def list(self, rel: str) -> list[ObjectInfo]:
        self.lists.append(rel)
        if rel not in self.tree:
            raise NotFound(rel)
        names = list(self.tree[rel])
        random.Random(rel).shuffle(names)  # the cache must sort, not trust the store
        return [self._info(rel, n) for n in names]

    async def head(self, rel: str) -> ObjectInfo:
        self.heads.append(rel)
        parent, _, name = rel.rpartition("/")
        return self._info(parent, name)


def _names(n: int) -> list[str]:
    rng = random.Random(3)
    alphabet = "aBc_-~0Zé"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    return list(out)


def _keys(kv: MemoryKV, prefix: bytes) -> list[bytes]:
    return [k for k, _ in kv.scan(prefix)]


async def _page_all(cache: MetadataCache, store: FakeStore, path: str, rel: str,
                    limit: int) -> list[list[FileStatus]]:
    pages: list[list[FileStatus]] = []
    after = ""
    while True:
        entries, more = await cache.listdir(MOUNT, cast(UnderStore, store), path, rel, after, limit)
        pages.append(entries)
        if not more:
            return pages
        assert entries, "more=True with an empty page would loop forever"
        after = entries[-1].path.rsplit("/", 1)[1]


async def test_listing_pages_walk_every_entry_once_in_byte_order() -> None:
    names = _names(2500)
    store = FakeStore({"d": names})
    kv = MemoryKV()
    cache = MetadataCache(kv)
    pages = await _page_all(cache, store, "/m/d", "d", 1000)
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert store.lists == ["d"]  # pages 2 and 3 came from the KV
    got = [s.path.rsplit("/", 1)[1] for p in pages for s in p]
    assert got == sorted(names, key=lambda n: n.encode())
    first = next(s for p in pages for s in p if s.path == f"/m/d/{names[0]}")
    assert (first.size, first.version, first.is_dir) == (len(names[0]), f"v-{names[0]}", False)
    # every child's status was recorded, and one listing header
    assert len(_keys(kv, b"s:/m/d/")) == 2500
    assert _keys(kv, b"l:") == [b"l:/m/d"]
    assert len(_keys(kv, b"e:/m/d\x00")) == 2500
    # a whole listing from the KV equals the paged walk; a second walk asks the store nothing
    whole, more = await cache.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d")
    assert not more and [s.path for s in whole] == [s.path for p in pages for s in p]
    again = await _page_all(cache, store, "/m/d", "d", 1000)
    assert [s.path for p in again for s in p] == [s.path for s in whole]
    assert store.lists == ["d"] and store.heads == []


async def test_listing_after_a_name_not_in_the_directory() -> None:
    store = FakeStore({"d": ["a", "b", "d", "e"]})
    cache = MetadataCache(MemoryKV())
    # from the store (first load) and from the KV: same answer
    for _ in range(2):
        entries, more = await cache.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", "c", 1)
        assert ([s.path for s in entries], more) == (["/m/d/d"], True)
    entries, more = await cache.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", "c", 2)
    assert ([s.path for s in entries], more) == (["/m/d/d", "/m/d/e"], False)
    entries, more = await cache.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", "e")
    assert (entries, more) == ([], False)
    assert store.lists == ["d"]


async def test_listing_exact_multiple_of_limit_ends_without_more() -> None:
    store = FakeStore({"d": [f"f{i:03d}" for i in range(20)]})
    cache = MetadataCache(MemoryKV())
    pages = await _page_all(cache, store, "/m/d", "d", 10)
    assert [len(p) for p in pages] == [10, 10]
    fresh = MetadataCache(MemoryKV())
    entries, more = await fresh.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", "", 20)
    assert len(entries) == 20 and not more


async def test_forget_subtree_drops_status_listing_and_entries() -> None:
    store = FakeStore({"": ["d/", "dd/", "top"], "d": ["sub/", *(f"f{i}" for i in range(50))],
                       "d/sub": ["x", "y"], "dd": ["keep1", "keep2"]})
    kv = MemoryKV()
    cache = MetadataCache(kv)
    su = cast(UnderStore, store)
    for path, rel in [("/m", ""), ("/m/d", "d"), ("/m/d/sub", "d/sub"), ("/m/dd", "dd")]:
        await cache.listdir(MOUNT, su, path, rel)
    assert cache.cached_status("/m/d") is not None
    dd_before = {p: _keys(kv, p) for p in (b"s:/m/dd", b"l:/m/dd", b"e:/m/dd")}
    assert all(dd_before.values())

    dropped = cache.forget_subtree("/m/d")
    assert dropped == 1 + 51 + 2  # /m/d itself, its 51 children, sub's 2
    assert _keys(kv, b"s:/m/d/") == [] and kv.get(b"s:/m/d") is None
    assert kv.get(b"l:/m/d") is None and _keys(kv, b"l:/m/d/") == []
    assert _keys(kv, b"e:/m/d\x00") == [] and _keys(kv, b"e:/m/d/") == []
    assert kv.get(b"l:/m") is None  # the parent's listing named it: stale now
    # the sibling whose name merely starts with "d" is untouched
    assert {p: _keys(kv, p) for p in dd_before} == dd_before
    assert cache.cached_status("/m/top") is not None
    # the next listing goes back to the under-store
    entries, _ = await cache.listdir(MOUNT, su, "/m/d", "d")
    assert len(entries) == 51 and store.lists.count("d") == 2
    assert cache.forget_subtree("/m/nothing-here") == 0


async def test_listing_children_elsewhere_go_to_on_load() -> None:
    names = [f"n{i}" for i in range(30)]
    store = FakeStore({"d": names})
    kv = MemoryKV()
    cache = MetadataCache(kv)
    loaded: list[list[FileStatus]] = []

    async def on_load(children: list[FileStatus]) -> None:
        loaded.append(children)

    entries, more = await cache.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", "", 10,
                                        children_here=False, on_load=on_load)
    assert len(entries) == 10 and more
    assert len(loaded) == 1
    assert [s.path for s in loaded[0]] == [f"/m/d/{n}" for n in sorted(names)]
    assert all(s.version == f"v-{s.path.rsplit('/', 1)[1]}" and s.fetched_at > 0 for s in loaded[0])
    assert _keys(kv, b"s:") == []
    assert kv.get(b"l:/m/d") is not None and len(_keys(kv, b"e:/m/d\x00")) == 30
    # served from the KV next time: no store call, no second on_load
    rest, more = await cache.listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", entries[-1].path[5:],
                                     children_here=False, on_load=on_load)
    assert len(rest) == 20 and not more and len(loaded) == 1 and store.lists == ["d"]
    # children_here=True also hands the children to on_load, and records them
    other: list[list[FileStatus]] = []

    async def on_load_other(children: list[FileStatus]) -> None:
        other.append(children)

    kv2 = MemoryKV()
    await MetadataCache(kv2).listdir(MOUNT, cast(UnderStore, store), "/m/d", "d", on_load=on_load_other)
    assert len(other) == 1 and len(other[0]) == 30 and len(_keys(kv2, b"s:/m/d/")) == 30


# ---------------------------------------------------------------------------
# meshd run: flag checks
# ---------------------------------------------------------------------------


def test_meshd_run_without_etcd_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_meshd.main(["run", "--data-dir", str(tmp_path / "d"), "--cluster", "c", "--region", "r"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--etcd" in err and err.startswith("meshd: ")
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_meshd_run_without_region_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_meshd.main(["run", "--etcd", "127.0.0.1:1", "--cluster", "c", "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "region" in err and "--region" in err


def test_meshd_run_bad_names_and_endpoints_exit_2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--etcd", "127.0.0.1:1", "--cluster", "c", "--region", "r", "--data-dir", str(tmp_path)]
    for extra, word in [(["--cluster", "../x"], "cluster.name"), (["--node-id", "a/b"], "cluster.node_id"),
                        (["--etcd", "nohostport"], "etcd endpoint"), (["--lease-ttl", "0"], "lease_ttl"),
                        (["--label", "novalue"], "--label")]:
        assert cli_meshd.main([*base, *extra]) == 2
        assert word in capsys.readouterr().err
