"""The composition root: a node's parts, built from its config in one place.

``meshd`` (:class:`meshd.daemon.Daemon`) and the tests (``tests/nodeutil.py``) build
a node the same way. :func:`open_node` builds and loads one (cluster mode: the
page size agreed in etcd first); :func:`build` alone wires the parts and starts
nothing, which is what an in-process node without servers needs. Every object
gets its dependencies in its constructor, in dependency order::

    kv, page cache, shard, Stats -> membership, cluster, federation (cluster mode)
      -> mount table -> MeshNode -> metrics (of all of them)

What cluster mode adds is one object, :class:`Clustered` (etcd, membership, ring
and peers, other regions, the shared mount table); :class:`Embedded` is the node
alone. Nothing else branches on the mode.

The node's member record (:func:`member`) carries its addresses, so the daemon
binds every port before it builds anything.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Mapping

from meshd import auth
from meshd.auth import credentials
from meshd.cache.pages import PageCache
from meshd.cache.readahead import ReadAhead
from meshd.cluster.membership import (
    Etcd,
    EtcdMembership,
    EtcdMounts,
    Member,
    Membership,
    StaticMembership,
    cluster_config,
    cluster_token,
)
from meshd.cluster.peers import Cluster
from meshd.config import NodeConfig
from meshd.core.node import MeshNode
from meshd.errors import InvalidArgument, MeshError
from meshd.metadata.kv import KV, RocksKV
from meshd.metadata.mounts import Mount, MountTable
from meshd.metadata.shard import MetadataCache
from meshd.metrics import Metrics, Stats, UnderstoreMetrics
from meshd.region.federation import EtcdFederation, Federation
from meshd.region.quota import Quotas, ThrottledStore
from meshd.secrets import KEY_FILE, SecretsKey
from meshd.tls import node_client_context
from meshd.understore import UnderStore
from meshd.writeback import EtcdRegistry, Journal, Registry, Writeback
from meshd.writeback.overlay import PendingStore
from topology.model import format_size

log = logging.getLogger(__name__)

DEFAULT_MOUNT_PATH = "/local"
WELCOME = b"""Hello from the data mesh.

This file lives in a local directory mounted at /local by `meshd embedded`.
You are reading it through the node's page cache: read it twice and
`meshctl report` shows the second read served from the cache.
"""

def member(config: NodeConfig, node_id: str, endpoints: Mapping[str, str] | None = None) -> Member:
    """This node's member record: ids, zone, capacity, and its addresses (``endpoints``:
    ``grpc``, ``http``, ``meta``, ... as published in ``endpoints.json``; none for a
    node without servers)."""
    cc, ep = config.cluster, dict(endpoints or {})
    return Member(node_id=node_id, cluster=cc.name or "embedded", region=cc.region or "local",
                  grpc=ep.get("grpc", ""), http=ep.get("http", ""), meta=ep.get("meta", ""), zone=cc.zone,
                  capacity=cc.capacity or config.cache.disk_capacity, labels=dict(cc.labels),
                  host=socket.gethostname(), data_dir=os.path.abspath(config.data_dir), pid=os.getpid(),
                  started=time.time(), endpoints=ep)


class Mode:
    """What differs between embedded and cluster mode; nothing else branches on it."""

    membership: Membership
    cluster: Cluster | None = None
    federation: Federation | None = None
    default_mount = False  # with no mount configured, mount a local directory at /local

    def mount_table(self, kv: KV, understore: UnderstoreMetrics, key: SecretsKey | None,
                    writeback: Writeback) -> MountTable:
        raise NotImplementedError

    def registry(self) -> Registry:
        """Where pending write-back writes are known: this node alone."""
        return Registry()

    async def start(self, mounts: MountTable) -> None:
        """Read what the node shares with others and follow it."""

    async def leave(self) -> None:
        await self.membership.stop()

    async def close(self) -> None:
        pass


class Embedded(Mode):
    """Embedded mode (``meshd embedded``, the tests): the node alone. No etcd, no peers,
    no other regions; the mount table lives in the node's KV store only."""

    default_mount = True

    def __init__(self, me: Member) -> None:
        self.membership = StaticMembership(me)

    def mount_table(self, kv: KV, understore: UnderstoreMetrics, key: SecretsKey | None,
                    writeback: Writeback) -> MountTable:
        return MountTable(kv, wrap=lambda store, mount: PendingStore(understore.wrap(store), mount, writeback),
                          key=key)


class Clustered(Mode):
    """Cluster mode (``meshd run``): membership on a lease in etcd, the region's ring
    and peers, the other regions (topology, quotas), the mount table shared in etcd."""

    cluster: Cluster
    federation: Federation

    def __init__(self, etcd: Etcd, config: NodeConfig, me: Member, token: str = "") -> None:
        cc = config.cluster
        self.etcd = etcd
        self.cluster_name = cc.name
        self.membership = EtcdMembership(etcd, me, cc.lease_ttl)
        self.cluster = Cluster(self.membership, peer_timeout=cc.peer_timeout, token=token,
                               ssl_context=node_client_context(config.tls) if config.tls.enabled else None)
        self.federation = Federation(cc.region, Quotas(), self.cluster)
        self.shared = EtcdMounts(etcd, cc.name)
        self.topology = EtcdFederation(etcd, cc.name, self.federation)

    def registry(self) -> Registry:
        """Pending write-back writes of every node of every region, in etcd."""
        return EtcdRegistry(self.etcd, self.cluster_name)

    def mount_table(self, kv: KV, understore: UnderstoreMetrics, key: SecretsKey | None,
                    writeback: Writeback) -> MountTable:
        fed = self.federation

        def wrap(store: UnderStore, mount: Mount) -> UnderStore:
            """Every byte to or from another region takes its links' quota tokens; pending
            write-back writes show as if in the store (meshd.writeback.overlay)."""
            throttled = ThrottledStore(store, lambda: fed.crossing(fed.home_of(mount)),
                                       lambda: fed.outbound(fed.home_of(mount)))
            return PendingStore(understore.wrap(throttled), mount, writeback)

        return MountTable(kv, wrap=wrap, shared=self.shared, endpoints=fed, key=key)

    async def start(self, mounts: MountTable) -> None:
        """The shared mount table and the topology (etcd must answer), then follow them."""
        try:
            await self.shared.start(mounts.sync_shared)
        except Exception as e:
            raise MeshError(f"cannot read the mount table from etcd: {type(e).__name__} {e}") from None
        try:
            await self.topology.start()
        except Exception as e:
            raise MeshError(f"cannot read the topology from etcd: {type(e).__name__} {e}") from None

    async def leave(self) -> None:
        await self.membership.stop()  # leave the ring first
        await self.shared.stop()
        await self.topology.stop()

    async def close(self) -> None:
        await self.cluster.close()
        await self.etcd.close()


@dataclasses.dataclass
class NodeParts:
    """A node's parts, wired. Lifecycle: :meth:`load` (mounts, topology), :meth:`join`
    (the ring, once servers answer), :meth:`leave` (before servers stop), :meth:`close`."""

    config: NodeConfig  # as built: in cluster mode the page size is the cluster's
    me: Member
    mode: Mode
    kv: KV
    stats: Stats
    cache: PageCache
    mounts: MountTable
    node: MeshNode
    metrics: Metrics
    _left: bool = dataclasses.field(default=False, init=False)

    @property
    def membership(self) -> Membership:
        return self.mode.membership

    @property
    def cluster(self) -> Cluster | None:
        return self.mode.cluster

    @property
    def federation(self) -> Federation | None:
        return self.mode.federation

    async def load(self) -> None:
        """The shared mount table and topology (cluster mode), then the configured mounts;
        an embedded node with none mounts a local directory at /local."""
        await self.mode.start(self.mounts)
        for m in self.config.mounts:
            await self.mounts.add(m.path, m.uri, m.options, replace=True)
        if not self.mounts.entries() and self.config.default_mount and self.mode.default_mount:
            await self._mount_welcome()
        if self.node.writeback is not None:
            await self.node.writeback.start()  # uploads the journal left resume

    async def sweep_tmp(self) -> int:
        """Remove the temporary files crashed writes left in the mounts' stores (older
        than ``limits.tmp_max_age``: writes in flight are never touched); how many."""
        removed = 0
        for m in self.mounts.entries():
            try:
                removed += await self.mounts.store(m).sweep_tmp(self.config.limits.tmp_max_age)
            except (OSError, MeshError) as e:
                log.warning("sweep of temporary files in %s: %s", m.path, e)
        return removed

    async def _mount_welcome(self) -> None:
        local = os.path.join(os.path.abspath(self.config.data_dir), "local-store")
        os.makedirs(local, exist_ok=True)
        welcome = os.path.join(local, "hello.txt")
        if not os.path.exists(welcome):
            with open(welcome, "wb") as f:  # noqa: ASYNC230 - start-up, once
                f.write(WELCOME)
        await self.mounts.add(DEFAULT_MOUNT_PATH, "file://" + local, {})
        log.info("no mounts configured: mounted %s at %s", local, DEFAULT_MOUNT_PATH)

    async def join(self) -> None:
        """Join the region's ring (cluster mode): peers see this node from now on."""
        await self.membership.start()

    async def leave(self) -> None:
        """Leave the ring and stop following etcd (before the servers stop)."""
        if not self._left:
            self._left = True
            await self.mode.leave()

    async def close(self) -> None:
        await self.leave()
        await self.node.close()
        await self.mode.close()
        self.kv.close()


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def warn_memory_capacity(capacity: int) -> None:
    """A memory tier larger than the machine's RAM starts, and swaps or is killed later: say so now."""
    ram = physical_memory()
    if ram and capacity > ram:
        log.warning("cache.memory_capacity (--memory-capacity) is %s, more than this machine's %s of RAM: "
                    "the node would swap or be OOM-killed once the tier fills; give it well under the RAM",
                    format_size(capacity), format_size(ram))


def secrets_key(config: NodeConfig) -> SecretsKey | None:
    """The key that seals the mount table's inline secrets: ``cluster.secrets_key_file``
    when given (the same file on every node of a cluster); else, in embedded mode,
    ``DATA_DIR/secrets.key`` (created 0600 on first start, beside the RocksDB directory,
    not in it); else None: a cluster node without a key refuses inline secrets."""
    if config.cluster.secrets_key_file:
        return SecretsKey.load(config.cluster.secrets_key_file)
    if config.cluster.enabled:
        return None
    data_dir = os.path.abspath(config.data_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    return SecretsKey.load_or_create(os.path.join(data_dir, KEY_FILE))


def access_of(config: NodeConfig, node_token: str = "") -> auth.Access:
    """Who may use the node: its own credentials (``DATA_DIR/credentials.json``, made on
    first start), the cluster token, the S3 keys of the config, the access file."""
    creds = credentials.ensure(os.path.abspath(config.data_dir),
                               credentials.derived(node_token) if node_token else None)
    return auth.Access(operator_hashes={auth.token_hash(creds["token"])},
                       node_hashes={auth.token_hash(node_token)} if node_token else set(),
                       operator_keys={**config.s3.access_keys, creds["s3_access_key"]: creds["s3_secret_key"]},
                       file=config.auth.file, enforce=config.auth.enforce,
                       max_in_flight_per_tenant=config.limits.max_in_flight_per_tenant)


def build(config: NodeConfig, me: Member, etcd: Etcd | None = None, node_token: str = "") -> NodeParts:
    """Every part of a node, wired; nothing started or read from etcd. Cluster mode
    (``config.cluster.enabled``) needs ``etcd``, and ``config``'s page size must be
    the cluster's (:func:`open_node` agrees it first); ``node_token``: what nodes
    present to each other (:func:`cluster_token`)."""
    if config.cluster.enabled and etcd is None:
        raise InvalidArgument("cluster mode needs a connection to etcd")
    c = config.cache
    warn_memory_capacity(c.memory_capacity)
    data_dir = os.path.abspath(config.data_dir)
    key = secrets_key(config)
    kv = RocksKV(os.path.join(data_dir, "meta"))
    stats = Stats()
    cache = PageCache(os.path.join(data_dir, "pages"), c.page_size, c.memory_capacity, c.disk_capacity,
                      c.high_watermark, c.low_watermark, c.write_behind, verify=c.verify,
                      verify_window=c.verify_window)
    access = access_of(config, node_token)
    mode: Mode = Clustered(etcd, config, me, node_token) if etcd is not None else Embedded(me)
    understore = UnderstoreMetrics(stats)
    w = config.writeback
    writeback = Writeback(Journal(kv, w.dir or os.path.join(data_dir, "writeback")), mode.registry(), w,
                          node_id=me.node_id, region=me.region, http=me.http)
    node = MeshNode(mode.mount_table(kv, understore, key, writeback), MetadataCache(kv), cache, stats,
                    ReadAhead(c.page_size, max_pages=c.readahead_pages), c.load_parallelism,
                    cluster=mode.cluster, federation=mode.federation, writeback=writeback)
    node.access = access
    metrics = Metrics(understore, cache, node.metadata, mode.cluster, mode.federation, writeback)
    return NodeParts(config, me, mode, kv, stats, cache, node.mounts, node, metrics)


async def agree_page_size(config: NodeConfig, etcd: Etcd) -> NodeConfig:
    """``config`` with the cluster's page size (the first node to start sets it)."""
    cc, page_size = config.cluster, config.cache.page_size
    try:
        shared = await cluster_config(etcd, cc.name, {"page_size": page_size})
    except MeshError:
        raise
    except Exception as e:
        raise MeshError(f"cannot reach etcd at {', '.join(cc.etcd)}: {type(e).__name__} {e}") from None
    agreed = int(shared.get("page_size", page_size))
    if agreed != page_size:
        log.warning("cluster %s uses %d-byte pages; using them instead of the configured %d",
                    cc.name, agreed, page_size)
    return dataclasses.replace(config, cache=dataclasses.replace(config.cache, page_size=agreed))


async def node_token(config: NodeConfig, etcd: Etcd) -> str:
    """The cluster token: ``cluster.token_file``, else the one the first node put in etcd."""
    cc = config.cluster
    if cc.token_file:
        return credentials.read_cluster_token(cc.token_file)
    try:
        return await cluster_token(etcd, cc.name, credentials.new_token())
    except MeshError:
        raise
    except Exception as e:
        raise MeshError(f"cannot reach etcd at {', '.join(cc.etcd)}: {type(e).__name__} {e}") from None


async def open_node(config: NodeConfig, me: Member) -> NodeParts:
    """A node built and loaded (what the daemon serves). In cluster mode etcd must
    answer: a node starting without it cannot know the page size or the mount table."""
    etcd = Etcd(config.cluster.etcd) if config.cluster.enabled else None
    try:
        token = ""
        if etcd is not None:
            config = await agree_page_size(config, etcd)
            token = await node_token(config, etcd)
        parts = build(config, me, etcd, token)
    except BaseException:
        if etcd is not None:
            await etcd.close()
        raise
    try:
        await parts.load()
    except BaseException:
        await parts.close()
        raise
    return parts


__all__ = ["Clustered", "Embedded", "Mode", "NodeParts", "agree_page_size", "build", "member", "open_node"]
