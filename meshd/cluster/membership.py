"""Who is in the region's cache cluster: membership in etcd, or static.

etcd layout (one cluster = one key prefix, ``/mesh/<cluster>/``)::

    /mesh/<cluster>/config                                 {"page_size": ...}
    /mesh/<cluster>/mounts/<mesh path>                     a mount (meshd/metadata/mounts.py)
    /mesh/<cluster>/regions/<region>/members/<node id>     a member record, on a lease

A node registers its record under a lease (``lease_ttl`` seconds) and keeps
the lease alive; a node that dies leaves the ring when its lease expires.
Every node watches its region's member prefix and rebuilds its ring on each
change. If etcd cannot be reached, the node keeps serving with the last
membership it knew, keeps retrying, and re-registers (with a new lease if the
old one expired) when etcd returns.

Records are checked before they enter the ring. A record that is not valid
JSON, lacks a field, names another cluster or region, or whose id differs
from its key, is ignored with one log line naming the key and the reason. A
node whose id is already registered by another live node (a different
address or data directory) refuses to start. The same node restarting (same
host and data directory, whose lock proves the old process is gone) takes
its record over at once instead of waiting for the old lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from meshd.errors import InvalidArgument, MeshError

log = logging.getLogger(__name__)

PREFIX = "/mesh"


class DuplicateNode(MeshError):
    """Another live node already uses this node id."""


@dataclass(frozen=True)
class Member:
    node_id: str
    cluster: str
    region: str
    grpc: str  # host:port
    http: str  # http://host:port
    meta: str  # host:port of the metadata wire
    zone: str = ""
    capacity: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    host: str = ""
    data_dir: str = ""
    pid: int = 0
    started: float = 0.0
    endpoints: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_record(cls, raw: bytes) -> Member:
        """Parse a record; ValueError names what is wrong."""
        try:
            d = json.loads(raw)
        except ValueError:
            raise ValueError("not valid JSON") from None
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        for key in ("node_id", "cluster", "region", "grpc", "http", "meta"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ValueError(f"field {key!r} missing or not a non-empty string")
        for key in ("grpc", "meta"):
            host, sep, port = d[key].rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"field {key!r} is not host:port: {d[key]!r}")
        url = urlsplit(d["http"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"field 'http' is not a URL: {d['http']!r}")
        capacity = d.get("capacity", 0)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise ValueError(f"field 'capacity' must be a byte count, got {capacity!r}")
        labels = d.get("labels", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ValueError("field 'labels' must map names to strings")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def members_prefix(cluster: str, region: str) -> str:
    return f"{PREFIX}/{cluster}/regions/{region}/members/"


Listener = Callable[[dict[str, Member]], None]


class Membership:
    """The live members of this node's region. Listeners get every change."""

    def __init__(self, me: Member) -> None:
        self.me = me
        self.members: dict[str, Member] = {me.node_id: me}
        self._listeners: list[Listener] = []
        self.etcd_ok = True

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _set(self, members: dict[str, Member]) -> None:
        members = dict(members)
        members[self.me.node_id] = self.me  # a node always counts itself in
        if members != self.members:
            added = sorted(set(members) - set(self.members))
            removed = sorted(set(self.members) - set(members))
            self.members = members
            if added or removed:
                log.info("membership: %d member(s)%s%s", len(members),
                         f"; joined {', '.join(added)}" if added else "",
                         f"; left {', '.join(removed)}" if removed else "")
            for fn in self._listeners:
                fn(self.members)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class StaticMembership(Membership):
    """Embedded mode: the node alone, no etcd."""


def parse_endpoint(url: str) -> tuple[str, int]:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise InvalidArgument(f"etcd endpoint {url!r} is not host:port")
    return parts.hostname, parts.port


class Etcd:
    """A connection to etcd that moves on to the next endpoint when one fails."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float = 3.0) -> None:
        import aetcd

        if not endpoints:
            raise InvalidArgument("no etcd endpoint given")
        self._aetcd = aetcd
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self._i = 0
        self.client: Any = self._make()

    def _make(self) -> Any:
        host, port = self.endpoints[self._i % len(self.endpoints)]
        return self._aetcd.Client(host=host, port=port, timeout=self.timeout,
                                  connect_wait_timeout=int(self.timeout))

    async def rotate(self) -> None:
        """Drop the current connection (it may be wedged) and use the next endpoint."""
        old, self._i = self.client, self._i + 1
        self.client = self._make()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.close(), self.timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.close(), self.timeout)

    async def call(self, coro: Any) -> Any:
        """Bound every etcd call: a wedged channel must not stall a loop forever."""
        return await asyncio.wait_for(coro, self.timeout + 2)


class EtcdMembership(Membership):
    RESYNC_EVERY = 15.0  # a full re-read of the member list, whatever the watch says

    def __init__(self, etcd: Etcd, me: Member, ttl: int) -> None:
        super().__init__(me)
        self.etcd = etcd
        self.ttl = ttl
        self.prefix = members_prefix(me.cluster, me.region)
        self.key = (self.prefix + me.node_id).encode()
        self._lease: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bad_logged: set[tuple[bytes, int]] = set()
        self._down_since: float | None = None
        self._stopping = False

    # ---- registration ----------------------------------------------------

    async def _register(self) -> None:
        c, call = self.etcd.client, self.etcd.call
        lease = await call(c.lease(self.ttl))
        tx = c.transactions
        ok, _ = await call(c.transaction(compare=[tx.create(self.key) == 0],
                                         success=[tx.put(self.key, self.me.to_json(), lease)], failure=[]))
        if not ok:
            existing = await call(c.get(self.key))
            other = None
            if existing is not None:
                with contextlib.suppress(ValueError):
                    other = Member.from_record(existing.value)
            same_node = other is not None and other.host == self.me.host and other.data_dir == self.me.data_dir
            if existing is not None and not same_node:
                await call(c.revoke_lease(lease.id))
                where = f"{other.grpc} (data dir {other.data_dir})" if other else "an unreadable record"
                raise DuplicateNode(
                    f"node id {self.me.node_id!r} is already registered in cluster {self.me.cluster!r} "
                    f"region {self.me.region!r} by a live node at {where}; refusing to join. "
                    "Give this node another id (--node-id) or stop the other one.")
            # our own previous incarnation (we hold its data-dir lock): take the record over
            await call(c.put(self.key, self.me.to_json(), lease=lease))
            log.info("took over member record %s from this node's previous run", self.key.decode())
        self._lease = lease

    async def _read_members(self) -> int:
        resp = await self.etcd.call(self.etcd.client.get_prefix(self.prefix.encode()))
        members: dict[str, Member] = {}
        for kv in resp:
            m = self._check(kv.key, kv.value, kv.mod_revision)
            if m is not None:
                members[m.node_id] = m
        self._set(members)
        return int(resp.header.revision)

    def _check(self, key: bytes, value: bytes, revision: int) -> Member | None:
        """A record fit for the ring, or None (logged once per key revision)."""
        node_id = key.decode(errors="replace")[len(self.prefix):]
        try:
            m = Member.from_record(value)
            if m.cluster != self.me.cluster:
                raise ValueError(f"it belongs to cluster {m.cluster!r}, not {self.me.cluster!r}")
            if m.region != self.me.region:
                raise ValueError(f"it belongs to region {m.region!r}, not {self.me.region!r}")
            if m.node_id != node_id:
                raise ValueError(f"its node_id {m.node_id!r} differs from its key")
            if m.node_id == self.me.node_id and m != self.me:
                raise ValueError("it claims this node's id with another address")
            return m
        except ValueError as e:
            if (key, revision) not in self._bad_logged:
                self._bad_logged.add((key, revision))
                log.error("membership: ignoring member record %s: %s", key.decode(errors="replace"), e)
            return None

    async def start(self) -> None:
        """Register and read the members. etcd must answer at start-up."""
        try:
            await self._register()
            revision = await self._read_members()
        except DuplicateNode:
            raise
        except Exception as e:
            raise MeshError(f"cannot register in etcd at {self.etcd.endpoints}: {_why(e)}") from None
        log.info("registered as %s in cluster %s region %s (lease %d s)", self.me.node_id,
                 self.me.cluster, self.me.region, self.ttl)
        self._tasks = [asyncio.ensure_future(self._keepalive()),
                       asyncio.ensure_future(self._watch(revision + 1))]

    # ---- loops -------------------------------------------------------------

    def _etcd_down(self, e: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.etcd_ok = False
            log.warning("etcd unreachable (%s): serving with the last known membership (%d members)",
                        _why(e), len(self.members))

    async def _recovered(self) -> None:
        if self._down_since is not None:
            log.info("etcd reachable again after %.1f s; membership resynchronised",
                     time.monotonic() - self._down_since)
            self._down_since = None
            self.etcd_ok = True

    async def _keepalive(self) -> None:
        """Refresh the lease and re-read the members every ttl/3 s. This loop alone
        decides whether etcd is reachable; every call in it is bounded in time."""
        interval = max(0.5, self.ttl / 3)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self._beat(), self.etcd.timeout * 3 + 2)
                await self._recovered()
            except asyncio.CancelledError:
                raise
            except DuplicateNode as e:
                log.error("%s", e)
            except Exception as e:
                self._etcd_down(e)
                await self.etcd.rotate()

    async def _beat(self) -> None:
        alive = False
        if self._lease is not None:
            resp = await self.etcd.call(self.etcd.client.refresh_lease(self._lease.id))  # the client may be new
            alive = resp is not None and int(getattr(resp, "TTL", 0)) > 0
        if not alive:
            log.warning("member lease expired (etcd was away longer than %d s): registering again", self.ttl)
            await self._register()
        await self._read_members()

    async def _watch(self, revision: int) -> None:
        last_resync = time.monotonic()
        while not self._stopping:
            try:
                watch = await self.etcd.call(self.etcd.client.watch_prefix(self.prefix.encode(),
                                                                            start_revision=revision))
                try:
                    async for event in watch:
                        revision = max(revision, int(event.kv.mod_revision) + 1)
                        members = dict(self.members)
                        key = bytes(event.kv.key)
                        node_id = key.decode(errors="replace")[len(self.prefix):]
                        if str(event.kind).endswith("DELETE"):
                            members.pop(node_id, None)
                        else:
                            m = self._check(key, bytes(event.kv.value), int(event.kv.mod_revision))
                            if m is None:
                                members.pop(node_id, None)
                            else:
                                members[m.node_id] = m
                        self._set(members)
                        if time.monotonic() - last_resync > self.RESYNC_EVERY:
                            break
                finally:
                    with contextlib.suppress(Exception):
                        await self.etcd.call(watch.cancel())
                revision = await self._read_members() + 1
                last_resync = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd away, or the keep-alive loop replaced the client: retry
                log.debug("member watch interrupted: %s", _why(e))
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    revision = await self._read_members() + 1

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.etcd.client.revoke_lease(self._lease.id), 2)  # leave now, not at expiry


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


# ---- cluster-wide state kept in etcd besides membership ---------------------------


async def cluster_config(etcd: Etcd, cluster: str, proposed: dict[str, Any]) -> dict[str, Any]:
    """The cluster's settings (``/mesh/<cluster>/config``): the first node writes its
    own, every later node adopts what is there (page geometry must agree cluster-wide)."""
    key = f"{PREFIX}/{cluster}/config".encode()
    c = etcd.client
    tx = c.transactions
    await etcd.call(c.transaction(compare=[tx.create(key) == 0],
                                  success=[tx.put(key, json.dumps(proposed).encode())], failure=[]))
    got = await etcd.call(c.get(key))
    try:
        d = json.loads(got.value) if got is not None else {}
        if not isinstance(d, dict):
            raise ValueError
    except ValueError:
        raise MeshError(f"etcd key {key.decode()} does not hold a JSON object; fix or delete it") from None
    return d


async def cluster_token(etcd: Etcd, cluster: str, proposed: str) -> str:
    """The token nodes of the cluster present to each other (``/mesh/<cluster>/auth/node-token``):
    the first node writes ``proposed``, every later node adopts what is there."""
    key = f"{PREFIX}/{cluster}/auth/node-token".encode()
    c = etcd.client
    tx = c.transactions
    await etcd.call(c.transaction(compare=[tx.create(key) == 0], success=[tx.put(key, proposed.encode())],
                                  failure=[]))
    got = await etcd.call(c.get(key))
    token = got.value.decode() if got is not None else ""
    if len(token) < 16:
        raise MeshError(f"etcd key {key.decode()} does not hold a cluster token; delete it (a node "
                        "makes a new one) or give every node cluster.token_file")
    return token


async def follow_prefix(etcd: Etcd, prefix: bytes, revision: int, on_event: Callable[[Any], Awaitable[None]],
                        reload: Callable[[], Awaitable[int]], prev_kv: bool = False) -> None:
    """Hand every change under ``prefix`` from ``revision`` on to ``on_event``, forever: a
    watch that fails (etcd restarted, away) is opened again after a second, from the
    revision ``reload`` (a full re-read) returns. ``prev_kv``: events carry the value
    the key had before (what a delete removed)."""
    while True:
        try:
            watch = await etcd.call(etcd.client.watch_prefix(prefix, start_revision=revision or None,
                                                             prev_kv=prev_kv))
            try:
                async for event in watch:
                    revision = max(revision, int(event.kv.mod_revision) + 1)
                    await on_event(event)
            finally:
                with contextlib.suppress(Exception):
                    await etcd.call(watch.cancel())
        except asyncio.CancelledError:
            raise
        except Exception:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                revision = await reload() + 1


class EtcdMounts:
    """The cluster's mount table in etcd. Changes go to etcd (``put``, ``delete``); from
    ``start(apply)`` on, a watch hands every version of the table to ``apply`` (a node's
    ``MountTable.sync_shared``)."""

    def __init__(self, etcd: Etcd, cluster: str) -> None:
        self.etcd = etcd
        self.prefix = f"{PREFIX}/{cluster}/mounts"
        self._apply: Callable[[list[Any]], Awaitable[None]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _key(self, path: str) -> bytes:
        return (self.prefix + path).encode()

    async def put(self, mount: Any) -> None:
        try:
            await self.etcd.call(self.etcd.client.put(self._key(mount.path), mount.to_json()))
        except Exception as e:
            raise MeshError(f"cannot change the mount table: etcd unreachable ({_why(e)})") from None

    async def delete(self, path: str) -> None:
        try:
            await self.etcd.call(self.etcd.client.delete(self._key(path)))
        except Exception as e:
            raise MeshError(f"cannot change the mount table: etcd unreachable ({_why(e)})") from None

    async def load(self) -> int:
        from meshd.metadata.mounts import Mount

        resp = await self.etcd.call(self.etcd.client.get_prefix((self.prefix + "/").encode()))
        mounts = []
        for kv in resp:
            try:
                mounts.append(Mount.from_json(kv.value))
            except (ValueError, KeyError, TypeError) as e:
                log.error("mount table: ignoring malformed entry %s: %s", kv.key.decode(errors="replace"), e)
        if self._apply is not None:
            await self._apply(mounts)
        return int(resp.header.revision)

    async def start(self, apply: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Read the table (etcd must answer), hand it to ``apply``, then follow changes."""
        self._apply = apply
        revision = await self.load()
        self._tasks = [asyncio.ensure_future(self._watch(revision + 1)), asyncio.ensure_future(self._poll())]

    async def _poll(self) -> None:
        """A watch that silently stalled (etcd restarted) must not freeze the table."""
        while True:
            await asyncio.sleep(10.0)
            with contextlib.suppress(Exception):
                await self.load()

    async def _watch(self, revision: int) -> None:
        async def changed(_event: Any) -> None:
            await self.load()

        await follow_prefix(self.etcd, (self.prefix + "/").encode(), revision, changed, self.load)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
