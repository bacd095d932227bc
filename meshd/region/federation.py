"""The regions of a mesh as one node sees them: topology, peer regions, routes, quotas.

Every region runs its own cache cluster (:mod:`meshd.cluster.peers`); they share
one etcd prefix (``/mesh/<cluster>/``), hence one mount table, and one
topology (``/mesh/<cluster>/topology``, the YAML text an operator applied
with ``meshctl topology apply``). This module gives a node:

* **The topology**, re-read every ``POLL`` seconds: a valid new text is
  applied at once (link quotas re-divided, under-store endpoints switched);
  an invalid one is ignored with one log line and the last good one kept.
* **The other regions' members** (read from etcd with the topology), each
  region with its own ring, so this node can name the owner of a page in a
  peer region the same way that region's nodes do.
* **Homes and endpoints.** A mount's home region is its topology store's
  ``home`` (the mount option ``store=<name>``, else the store whose ``uri``
  prefixes the mount's), else the mount option ``home_region``, else this
  region. Its under-store is opened with the store's endpoint for this region.
* **Routing.** For pages this node owns and must fetch, ``plan`` asks the
  peer regions whose cache would beat the home under-store which of the
  pages they hold (one call per region and file, answered by that region's
  owners, remembered for ``HELD_TTL`` seconds) and ranks the sources with
  the pure router (:func:`topology.router.route`).
* **Quotas.** ``crossing(src)``: the link quotas (:mod:`meshd.region.quota`) that
  bytes from region ``src`` to this one take tokens from.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from meshd.cluster.membership import PREFIX, Etcd, Member, _why
from meshd.cluster.peers import Cluster, page_url, ring_of
from meshd.cluster.ring import HashRing
from meshd.errors import MeshError, NodeUnavailable, UnderStoreError
from meshd.metadata.mounts import Mount
from meshd.region.quota import STREAM_BUFFER, Crossing, LinkQuota, Pacer, Quotas
from topology.model import Topology, TopologyError, parse
from topology.router import Source, network_path, route, worth_asking

log = logging.getLogger(__name__)

POLL = 2.0  # seconds between re-reads of the topology and the peer regions' members
GRANT_WAIT = 30.0  # seconds a node waits for the quota owner's grant before using its local share
HELD_TTL = 5.0  # seconds a peer region's "which pages do you hold" answer is trusted
REGION_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3.0, sock_connect=3.0, sock_read=5.0)


def topology_key(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/topology"


class Federation:
    """``cluster``: this region's cluster (the quota owners, the peers to call); its
    membership changes re-divide the quotas. ``members``: the live member count that
    divides them (default: the cluster's, else 1)."""

    def __init__(self, region: str, quotas: Quotas, cluster: Cluster | None = None,
                 members: Callable[[], int] | None = None, vnodes: int = 128) -> None:
        self.region = region
        self.quotas = quotas
        self.cluster = cluster
        if members is None:
            members = (lambda: len(cluster.members)) if cluster is not None else (lambda: 1)
        self._members = members  # live members of this region (the quota share)
        self.vnodes = vnodes
        self.topology: Topology | None = None
        self.peers: dict[str, dict[str, Member]] = {}
        self._rings: dict[str, HashRing] = {}
        self._held: dict[tuple[str, str, str], tuple[float, set[int]]] = {}
        self._listeners: list[Callable[[], Any]] = []
        self.routed: Counter[str] = Counter()  # pages fetched, by source ("cache:<region>", "store:<region>")
        self.fallbacks = 0  # sources that failed and were passed over
        if cluster is not None:
            cluster.membership.subscribe(lambda _members: self.refresh_quotas())

    # ---- state ---------------------------------------------------------------

    def on_change(self, fn: Callable[[], Any]) -> None:
        """Called after a new topology is applied (the mount table reopens stores)."""
        self._listeners.append(fn)

    def set_topology(self, topo: Topology | None) -> None:
        old, self.topology = self.topology, topo
        self.refresh_quotas()
        if old is None or topo is None or old.text != topo.text:
            for fn in self._listeners:
                fn()

    def refresh_quotas(self) -> None:
        """(Re)divide every link's quota among this region's live members. Every link
        has a bucket: a multi-hop path takes tokens on each link it crosses."""
        topo = self.topology
        links = {k: (link.quota, link.overhead, link.latency) for k, link in topo.links.items()} if topo else {}
        self.quotas.configure(links, self._members())

    def set_peers(self, members: dict[str, dict[str, Member]]) -> None:
        members = {r: ms for r, ms in members.items() if r != self.region}
        for region, ms in members.items():
            if ms != self.peers.get(region):
                self._rings[region] = ring_of(ms.values(), self.vnodes)
        for region in set(self._rings) - set(members):
            del self._rings[region]
        self.peers = members

    # ---- mounts ----------------------------------------------------------------

    def store_of(self, mount: Mount) -> Any:
        if self.topology is None:
            return None
        return self.topology.store_for(mount.uri, mount.options.get("store") or None)

    def home_of(self, mount: Mount) -> str:
        store = self.store_of(mount)
        if store is not None:
            return str(store.home)
        return mount.options.get("home_region") or self.region

    def store_options(self, mount: Mount) -> dict[str, str]:
        opts = mount.store_options()
        store = self.store_of(mount)
        if store is not None:
            endpoint = store.endpoint_for(self.region)
            if endpoint:
                opts["endpoint"] = endpoint
        return opts

    # ---- quotas ----------------------------------------------------------------

    def _crossing(self, hops: list[str] | None) -> Crossing:
        if not hops:
            return Crossing([])
        out = []
        for a, b in itertools.pairwise(hops):
            q = self.quotas.get(a, b)
            if q is not None and q.limited:
                out.append(q)
        return Crossing(out, self._grant)

    def quota_owner(self, q: LinkQuota) -> Member | None:
        """The node of this region holding the region's bucket for ``q``; None: this one."""
        c = self.cluster
        if c is None or c.single:
            return None
        chain = c.chain(f"q:{q.name}".encode(), 1)
        return None if not chain or c.is_me(chain[0]) else chain[0]

    async def _grant(self, q: LinkQuota, tokens: float) -> None:
        """Tokens from the region's bucket for ``q``: here if this node is its quota owner,
        else asked of the owner; if the owner does not answer, from the local share."""
        owner, cluster = self.quota_owner(q), self.cluster
        if owner is None or cluster is None:
            await q.bucket.acquire(tokens)
            return
        q.remote_grants += 1
        try:
            await cluster.call(owner, "quota.take", {"l": q.name, "t": tokens}, wait=GRANT_WAIT)
        except MeshError as e:
            q.fallbacks += 1
            log.debug("quota owner %s of %s did not grant (%s): using the local share", owner.node_id, q.name, e)
            await q.local.acquire(tokens)

    async def serve_grant(self, name: str, tokens: float) -> float:
        """A peer of this region asks this node, as quota owner, for tokens."""
        q = self.quotas.by_name(name)
        if q is None or not q.limited:
            return 0.0  # unknown here (yet): no limit known to enforce
        return await q.bucket.acquire(tokens)

    def crossing(self, src: str) -> Crossing:
        """Quotas that bytes from region ``src`` into this region take tokens from."""
        if self.topology is None or src == self.region:
            return Crossing([])
        return self._crossing(network_path(self.topology, src, self.region))

    def outbound(self, dst: str) -> Crossing:
        """Quotas that bytes from this region to region ``dst`` take tokens from (writes)."""
        if self.topology is None or dst == self.region:
            return Crossing([])
        return self._crossing(network_path(self.topology, self.region, dst))

    # ---- routing -----------------------------------------------------------------

    def owner_in(self, region: str, key: bytes) -> Member | None:
        ring = self._rings.get(region)
        if ring is None:
            return None
        ids = ring.owners(key, 1)
        return self.peers.get(region, {}).get(ids[0]) if ids else None

    async def plan(self, mount: Mount, path: str, version: str, size: int, fid: str, vid: str,
                   indices: list[int], page_size: int,
                   ask: Callable[[Member, str, dict[str, Any]], Any]) -> dict[int, list[Source]] | None:
        """Sources for each page, cheapest first; None when the mount's home is this
        region or no topology is known (read the under-store directly)."""
        topo = self.topology
        home = self.home_of(mount)
        if topo is None or home == self.region:
            return None
        # The region's own use of a quota is not "load" here: its transfers queue fairly
        # for the quota owner's tokens, and moving to a dearer link because our own
        # transfer fills the cheap one would pay for bytes to save seconds. The router's
        # ``load`` models traffic of others (simulations).
        load: dict[tuple[str, str], float] = {}
        regions = [r for r in worth_asking(topo, self.region, home, page_size, load) if r in self.peers]
        held: dict[str, set[int]] = {}
        if regions:
            answers = await asyncio.gather(*(self._held_by(r, path, version, size, fid, vid, indices, ask)
                                             for r in regions))
            held = dict(zip(regions, answers, strict=True))
        out: dict[int, list[Source]] = {}
        for i in indices:
            holders = [r for r, pages in held.items() if i in pages]
            out[i] = route(topo, self.region, home, holders, min(page_size, size - i * page_size), load)
        return out

    async def _held_by(self, region: str, path: str, version: str, size: int, fid: str, vid: str,
                       indices: list[int], ask: Callable[[Member, str, dict[str, Any]], Any]) -> set[int]:
        """The pages of ``indices`` that ``region`` holds (asked of any of its members,
        which asks the owners); remembered for HELD_TTL seconds per file version."""
        now = time.monotonic()
        cached = self._held.get((region, fid, vid))
        if cached is not None and cached[0] > now:
            return cached[1]
        members = sorted(self.peers.get(region, {}).values(), key=lambda m: m.node_id)
        # Ask the member owning the file's first requested page: the same one every time.
        first = self.owner_in(region, f"p:{fid}:{indices[0]}".encode()) if indices else None
        if first is not None:
            members.remove(first)
            members.insert(0, first)
        for m in members[:2]:
            try:
                got = await ask(m, "region.held", {"p": path, "v": version, "z": size})
                pages = {int(i) for i in got}
                break
            except MeshError as e:
                log.debug("region %s (%s) cannot say which pages of %s it holds: %s", region, m.node_id, path, e)
        else:
            pages = set()
        self._held[(region, fid, vid)] = (now + HELD_TTL, pages)
        if len(self._held) > 4096:
            for k in [k for k, (exp, _) in self._held.items() if exp <= now]:
                del self._held[k]
        return pages

    def forget_held(self, region: str, fid: str, vid: str) -> None:
        self._held.pop((region, fid, vid), None)

    def note_routed(self, source: str) -> None:
        """A page was fetched from ``source`` (``cache:<region>`` or ``store:<region>``)."""
        self.routed[source] += 1

    def note_failed(self, src: Source, fid: str, vid: str) -> None:
        """``src`` failed to deliver a page of ``fid``: passed over, and a peer region's
        cache is asked again which pages it holds before it is chosen once more."""
        self.fallbacks += 1
        if src.kind == "cache":
            self.forget_held(src.region, fid, vid)

    async def fetch_from_region(self, region: str, path: str, version: str, size: int, fid: str,
                                index: int, page_size: int) -> bytes:
        """Page ``index`` from the cache of its owner in ``region``: one request, its body
        read at the quota's pace (each grain's tokens before its bytes are read; the first
        grain's before the request goes out). NotFound when that owner does not hold it
        (it never fetches on our behalf)."""
        owner = self.owner_in(region, f"p:{fid}:{index}".encode())
        if owner is None:
            raise NodeUnavailable(f"no live member in region {region}")
        if self.cluster is None:
            raise NodeUnavailable("no cluster: peer regions are reached only in cluster mode")
        crossing = self.crossing(region)
        length = min(page_size, size - index * page_size)
        url = page_url(owner, path, version, size, index) + "&cached=1"
        who = f"region {region} ({owner.node_id})"
        if not crossing:
            async with self.cluster.open_page(owner, url, who, REGION_TIMEOUT) as (_, body):
                data = await body.read()
            if len(data) != length:
                raise UnderStoreError(f"region {region} sent {len(data)} of {length} bytes of page {index} of {path}")
            return data
        rcvbuf = crossing.rcvbuf
        pacer = Pacer(crossing, length, "region", window=2 * rcvbuf + STREAM_BUFFER)
        parts: list[bytes] = []
        try:
            await pacer.open()
            await pacer.ready()  # the first grain's tokens before the request
            async with self.cluster.open_page(owner, url, who, REGION_TIMEOUT, rcvbuf) as (_, body):
                while not pacer.finished:
                    n = await pacer.ready()
                    try:
                        parts.append(await body.readexactly(n))
                    except asyncio.IncompleteReadError as e:
                        raise UnderStoreError(f"region {region} sent {pacer.done + len(e.partial)} of {length} "
                                              f"bytes of page {index} of {path}") from None
                    await pacer.took(n)
                if not body.at_eof() and await body.read(1):
                    raise UnderStoreError(f"region {region} sent more than the {length} bytes of page {index} "
                                          f"of {path}")
        finally:
            await pacer.close()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # ---- report --------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        topo = self.topology
        return {
            "region": self.region,
            "topology": topo.name if topo is not None else None,
            "regions": {r: len(ms) for r, ms in sorted(self.peers.items())},
            "links": [q for q in self.quotas.report()
                      if self.region in (q["src"], q["dst"]) or q["bytes"]],
            "routed_pages": dict(sorted(self.routed.items())),
            "route_fallbacks": self.fallbacks,
        }

class EtcdFederation:
    """Keeps a Federation's topology and peer regions in step with etcd (polled)."""

    def __init__(self, etcd: Etcd, cluster: str, fed: Federation) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.fed = fed
        self._task: asyncio.Task[None] | None = None
        self._text: bytes | None = None
        self._bad: set[bytes] = set()
        self._bad_records: set[tuple[bytes, int]] = set()

    async def load(self) -> None:
        c, call = self.etcd.client, self.etcd.call
        got = await call(c.get(topology_key(self.cluster).encode()))
        text = bytes(got.value) if got is not None else None
        if text != self._text:
            if text is None:
                log.info("topology removed from etcd: no links, no quotas")
                self.fed.set_topology(None)
                self._text = None
            elif text not in self._bad:
                try:
                    topo = parse(text.decode("utf-8", errors="replace"), topology_key(self.cluster))
                except TopologyError as e:
                    self._bad.add(text)
                    log.error("ignoring the topology in etcd (keeping the last good one): %s", e)
                else:
                    log.info("topology %s applied: %d regions, %d links", topo.name or "(unnamed)",
                             len(topo.regions), len(topo.links))
                    self.fed.set_topology(topo)
                    self._text = text
        prefix = f"{PREFIX}/{self.cluster}/regions/"
        resp = await call(c.get_prefix(prefix.encode()))
        peers: dict[str, dict[str, Member]] = {}
        for kv in resp:
            key = bytes(kv.key)
            try:
                m = Member.from_record(bytes(kv.value))
                if m.cluster != self.cluster or key.decode() != f"{prefix}{m.region}/members/{m.node_id}":
                    raise ValueError("its cluster, region or id differs from its key")
            except ValueError as e:
                if (key, int(kv.mod_revision)) not in self._bad_records:
                    self._bad_records.add((key, int(kv.mod_revision)))
                    log.error("federation: ignoring member record %s: %s", key.decode(errors="replace"), e)
                continue
            peers.setdefault(m.region, {})[m.node_id] = m
        self.fed.set_peers(peers)
        self.fed.refresh_quotas()  # this region's member count may have changed

    async def start(self) -> None:
        await self.load()
        self._task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            try:
                await self.load()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd away: keep the last topology and peers
                log.debug("federation poll failed: %s", _why(e))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def apply_topology(etcd: Etcd, cluster: str, text: str) -> None:
    """Store a topology's text for every node of the cluster (validate it first)."""
    await etcd.call(etcd.client.put(topology_key(cluster).encode(), text.encode()))


async def read_topology(etcd: Etcd, cluster: str) -> str | None:
    got = await etcd.call(etcd.client.get(topology_key(cluster).encode()))
    return bytes(got.value).decode() if got is not None else None


__all__ = ["EtcdFederation", "Federation", "apply_topology", "read_topology", "topology_key"]
